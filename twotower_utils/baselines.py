"""Non-neural baselines the two-tower model must beat (DESIGN §5): most-popular and EASE.

Both fit on a sparse user x item training matrix (row = user index, column = item index; any
stored value counts as an interaction) and score users as dense `[len(users), I]` arrays, so
they plug into `twotower_utils.topk.top_k_from_scores`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.ranking import check_metrics, ranking_metrics
from twotower_utils.topk import top_k_from_scores

__all__ = ["MostPopular", "PopularityByFeature", "EASE", "DEFAULT_EASE_GRID", "tune_ease"]

DEFAULT_EASE_GRID = (50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0)


def _binary_csr(train: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """The training matrix as float64 CSR with every stored interaction set to 1."""
    x = sp.csr_matrix(train, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


class MostPopular:
    """Scores every item by its number of distinct training users, the same for every user.

    Ties keep the lower item index first (see `top_k_from_scores`).
    """

    def __init__(self) -> None:
        self.popularity_: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | sp.sparray) -> MostPopular:
        """Count each item's users in `train` (sparse `[U, I]`); returns self."""
        x = _binary_csr(train)
        self.popularity_ = np.asarray(x.sum(axis=0)).ravel()
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Popularity scores, float64 `[len(user_idx), I]` (identical rows)."""
        if self.popularity_ is None:
            raise RuntimeError("MostPopular.scores called before fit")
        return np.tile(self.popularity_, (len(np.atleast_1d(user_idx)), 1))


class PopularityByFeature:
    """Cold-item baseline: items scored by how popular their feature values are in training.

    For each categorical or multi-hot item feature, a value's popularity is the mean number
    of training users of the training items that have it; an item's score is the mean, over
    its features, of the mean popularity of its values. Values never seen on a training item
    (and numeric features) carry no information and are skipped; an item with none left
    gets the mean training popularity. The same scores for every user.
    """

    def __init__(self) -> None:
        self.scores_: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | sp.sparray, item_features: dict[str, np.ndarray],
            specs: Sequence[dict]) -> PopularityByFeature:
        """Fit on `train` (sparse `[U, I]`) and the item feature tables (`name -> [I]` codes
        or `[I, L]` padded multi-hot codes, 0 = unknown) described by `specs`; returns self."""
        counts = np.asarray(_binary_csr(train).sum(axis=0)).ravel()
        seen = counts > 0
        per_feature = []
        for spec in specs:
            if spec["type"] not in ("categorical", "multi_hot"):
                continue
            codes = np.asarray(item_features[spec["name"]]).reshape(len(counts), -1)
            rows = np.repeat(np.arange(len(counts)), codes.shape[1])
            values = codes.ravel()
            keep = values > 0
            incidence = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], values[keep])),
                                      shape=(len(counts), int(values.max(initial=0)) + 1))
            incidence.data[:] = 1.0  # a value listed twice on one item counts once
            trained = incidence[seen]
            items_with = np.asarray(trained.sum(axis=0)).ravel()
            value_pop = np.divide(trained.T @ counts[seen], items_with,
                                  out=np.full(len(items_with), np.nan), where=items_with > 0)
            known = incidence.multiply(np.isfinite(value_pop)[None, :]).tocsr()
            total = known @ np.nan_to_num(value_pop)
            n_known = np.asarray(known.sum(axis=1)).ravel()
            per_feature.append(np.divide(total, n_known, out=np.full(len(counts), np.nan),
                                         where=n_known > 0))
        fallback = counts[seen].mean() if seen.any() else 0.0
        if per_feature:
            stacked = np.vstack(per_feature)
            known = np.isfinite(stacked)
            total = np.where(known, stacked, 0.0).sum(axis=0)
            n_known = known.sum(axis=0)
            self.scores_ = np.where(n_known > 0, total / np.maximum(n_known, 1), fallback)
        else:
            self.scores_ = np.full(len(counts), fallback)
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Feature-popularity scores, float64 `[len(user_idx), I]` (identical rows)."""
        if self.scores_ is None:
            raise RuntimeError("PopularityByFeature.scores called before fit")
        return np.tile(self.scores_, (len(np.atleast_1d(user_idx)), 1))


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019): closed-form item-item weights.

    `B = I - P diag(1/diag(P))` with `P = (XᵀX + l2·I)⁻¹`, so diag(B) = 0 and a user's scores
    are `x_u B`. Memory and time are those of a dense `I x I` inverse: fine up to a few tens
    of thousands of items.
    """

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 = {l2}: expected a positive regularisation weight")
        self.l2 = float(l2)
        self.weights_: np.ndarray | None = None
        self.train_: sp.csr_matrix | None = None

    def fit(self, train: sp.spmatrix | sp.sparray) -> EASE:
        """Solve for the item-item weights on `train` (sparse `[U, I]`); returns self."""
        x = _binary_csr(train)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = precision / (-np.diag(precision))
        np.fill_diagonal(weights, 0.0)
        self.weights_ = weights
        self.train_ = x
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores `x_u B` from the users' training rows, float64 `[len(user_idx), I]`."""
        if self.weights_ is None or self.train_ is None:
            raise RuntimeError("EASE.scores called before fit")
        return np.asarray(self.train_[np.atleast_1d(user_idx)] @ self.weights_)


def tune_ease(
    train: sp.spmatrix | sp.sparray,
    validation: sp.spmatrix | sp.sparray,
    grid: Sequence[float] = DEFAULT_EASE_GRID,
    k: int = 10,
    metric: str = "ndcg",
    candidates: np.ndarray | None = None,
) -> tuple[float, pd.DataFrame]:
    """Pick EASE's l2 on a validation split (never the test split).

    Args:
        train: sparse `[U, I]` interactions EASE is fitted on; also excluded from the lists.
        validation: sparse `[U, I]` held-out items the lists are scored against.
        grid: l2 values to try.
        k: cut-off; metric: the name from `METRICS` to maximise at k.
        candidates: bool `[I]` of recommendable items; default the items seen in `train`.

    Returns:
        `(best_l2, table)`: the first l2 with the highest metric, and a DataFrame with one row
        per l2 (column "l2", every metric at k, "fit_seconds").
    """
    check_metrics([metric])
    train = sp.csr_matrix(train)
    if candidates is None:
        candidates = np.asarray((train != 0).sum(axis=0)).ravel() > 0
    rows = []
    for l2 in grid:
        started = time.perf_counter()
        model = EASE(l2=l2).fit(train)
        fit_seconds = time.perf_counter() - started
        top_idx, _ = top_k_from_scores(
            model.scores, train.shape[0], k, exclude=train, candidates=candidates
        )
        rows.append(
            {
                "l2": float(l2),
                **ranking_metrics(top_idx, validation, (k,), num_items=int(candidates.sum())),
                "fit_seconds": fit_seconds,
            }
        )
    table = pd.DataFrame(rows)
    best = float(table.loc[table[f"{metric}@{k}"].idxmax(), "l2"])
    return best, table
