"""The evaluation protocol: who is scored on a split, against what, among which items.

The one place it is written down (numpy/scipy only). For a split of the processed data
("validation" or "test"):

- `users`: the user indices with held-out items in the split (the others are not scored);
- `relevant`: csr `[num_users, num_items]` of the split's positives, what is scored against;
- `exclude`: csr `[num_users, num_items]` of what each user is known to have before the split,
  the "training part": the training split for validation (what the data stage saves as
  `history`), train + validation for test. It is never recommended, and it is the history
  the user tower reads;
- `candidates`: bool `[num_items]`, the recommendable items: those seen in the training part,
  or, with `cold_items=True` (the `cold_items` split, whose held-out items are unseen in
  training), the split's own items, so the cold items are ranked among themselves.

`evaluation_protocol(data, split)` returns it as an `EvaluationProtocol`; every evaluation
path uses it: `TwoTowerRecallSystem.evaluate_model` and its serving state (the test split's
training part and candidates are what `recommend_items` excludes and ranks), the training
loop's validation (`model.fitting`, `model.training.Trainer`'s candidate default, under any
strategy) and the notebooks' tables (`reports.analysis.EvalProtocol`).
`training_part`, `seen_items` and `scored_users` are its three rules, for callers that hold
only one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["SPLITS", "EvaluationProtocol", "evaluation_protocol", "scored_users",
           "seen_items", "training_part"]

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class EvaluationProtocol:
    """One split's protocol (see the module docstring): `split`, int `users`, csr `relevant`
    and `exclude` (`[num_users, num_items]`, every user's row) and bool `candidates`."""

    split: str
    users: np.ndarray
    relevant: sp.csr_matrix
    exclude: sp.csr_matrix
    candidates: np.ndarray

    @property
    def num_candidates(self) -> int:
        """How many items are recommendable (the catalogue size for coverage)."""
        return int(self.candidates.sum())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: expected 'test' or 'validation'")


def training_part(data: Any, split: str) -> sp.csr_matrix:
    """What users are known to have before `split`: binary csr `[num_users, num_items]`.

    Takes a `ProcessedData` (anything with its `interactions(split)`) and "validation" or
    "test". Returns the training split's positives for validation (`data.history`, the data
    stage's csr of them, where the data has it), the train + validation positives for test.
    """
    _check_split(split)
    if split == "validation":
        history = getattr(data, "history", None)
        return data.interactions("train") if history is None else history
    both = (data.interactions("train") + data.interactions("validation")).tocsr()
    both.data[:] = 1.0
    return both


def seen_items(matrix: sp.spmatrix) -> np.ndarray:
    """Bool `[num_items]`: the items with any stored entry in the csr `matrix` (the
    candidates of a training part)."""
    return np.asarray(matrix.sum(axis=0)).ravel() > 0


def scored_users(relevant: sp.csr_matrix) -> np.ndarray:
    """The int indices of the users (rows of the csr `relevant`) with any held-out item."""
    return np.flatnonzero(np.diff(sp.csr_matrix(relevant).indptr) > 0)


def evaluation_protocol(data: Any, split: str = "test",
                        cold_items: bool = False) -> EvaluationProtocol:
    """The protocol of `split` ("validation" or "test") of the processed data `data`.

    Args:
        data: a `ProcessedData` (its `interactions(split)` and `history`).
        split: the held-out split to score.
        cold_items: rank among the split's own items instead of those seen in the training
            part (the `cold_items` split method, whose held-out items are unseen there).

    Returns:
        An `EvaluationProtocol`: users with held-out items, the relevant and excluded csr
        matrices (all users' rows) and the candidate mask.
    """
    exclude = training_part(data, split)  # checks `split`
    relevant = data.interactions(split)
    return EvaluationProtocol(split=split, users=scored_users(relevant), relevant=relevant,
                              exclude=exclude,
                              candidates=seen_items(relevant if cold_items else exclude))
