"""What training scores on validation each epoch: the whole model's ranking metrics over the
full catalogue (`evaluate_ranking`) and each ensemble member's on its own slice of the
embeddings (`member_metrics`), both from one embedding pass (`validation_vectors`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from twotower_utils.evaluation.metrics import ranking_metrics, top_k_scores
from twotower_utils.evaluation.protocol import scored_users

__all__ = ["evaluate_ranking", "member_metrics", "validation_vectors"]


def evaluate_ranking(model, exclude: sp.csr_matrix, relevant: sp.csr_matrix,
                     candidates: np.ndarray | None, k_values: Sequence[int] = (10,),
                     metrics: Sequence[str] = ("precision", "recall", "ndcg", "map"),
                     history: sp.csr_matrix | None = None,
                     vectors: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Full-catalogue ranking metrics of `model` for the users with relevant items.

    Args:
        model: a `TwoTowerModel`.
        exclude: csr `[num_users, num_items]` of items never recommended to a user (their
            known positives).
        relevant: csr `[num_users, num_items]` of held-out positives to score against.
        candidates: bool `[num_items]` of recommendable items (None: all).
        k_values, metrics: as in `evaluation.ranking_metrics`.
        history: csr of the items fed to the user tower's history input (None: the
            model's training history).
        vectors: `(user, item)` embeddings already computed (`validation_vectors`), else
            computed here.

    Returns:
        `{"ndcg@10": ..., ...}`.
    """
    relevant = sp.csr_matrix(relevant)
    users = scored_users(relevant)
    user_vec, item_vec = vectors or validation_vectors(model, relevant, history)
    top_idx, _ = top_k_scores(user_vec, item_vec, max(k_values),
                              exclude=sp.csr_matrix(exclude)[users], candidates=candidates)
    return ranking_metrics(top_idx, relevant[users], tuple(k_values), tuple(metrics))


def validation_vectors(model, relevant: sp.csr_matrix, history: sp.csr_matrix | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`model`'s embeddings of the users with relevant items (`scored_users(relevant)`, in
    that order; `history` as in `evaluate_ranking`) and of every item: `(user, item)`."""
    users = scored_users(sp.csr_matrix(relevant))
    return model.user_embeddings(users, history), model.item_embeddings()


def member_metrics(model, exclude: sp.csr_matrix, relevant: sp.csr_matrix,
                   candidates: np.ndarray | None, metric: str,
                   members=None, vectors: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> dict[int, float]:
    """`{member: metric}` (e.g. "ndcg@10") on `relevant` for `members` (default all), each
    scored by its own slice of the embeddings alone (`exclude`: items never recommended;
    `candidates`: recommendable; `vectors`: the model's `(user, item)` embeddings of
    `scored_users(relevant)` and of every item, when already computed)."""
    name, k = metric.split("@")[0], int(metric.split("@")[1])
    relevant = sp.csr_matrix(relevant)
    users = scored_users(relevant)
    user_vec, item_vec = vectors or validation_vectors(model, relevant)
    width = user_vec.shape[1] // model.members
    excluded = sp.csr_matrix(exclude)[users]
    values = {}
    for member in range(model.members) if members is None else members:
        part = slice(member * width, (member + 1) * width)
        top, _ = top_k_scores(user_vec[:, part], item_vec[:, part], k,
                              exclude=excluded, candidates=candidates)
        values[int(member)] = float(
            ranking_metrics(top, relevant[users], (k,), (name,))[metric])
    return values
