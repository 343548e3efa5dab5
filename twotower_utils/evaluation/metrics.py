"""Ranking metrics, baselines and comparison tables, numpy/scipy/pandas only.

The baselines (most-popular, EASE, item-kNN) live in `twotower_utils.evaluation.baselines` and are
re-exported here.

Two ways to score the same recommendations, with one implementation of the formulas
(`twotower_utils.evaluation.ranking`):

- the DataFrame API (`precision_at_k`, `recall_at_k`, `ndcg_at_k`, `mean_average_precision`,
  `map_at_k`, `hit_rate_at_k`, `catalog_coverage`, `evaluate_recommendations`), with the
  semantics of Microsoft Recommenders' `python_evaluation` (binary relevance,
  `relevancy_method="top_k"`): an adapter that ranks each user's rows, turns them into a
  top-k index matrix and a relevance matrix, and scores those with the array API;
- the array API (`ranking_metrics`) over a `[U, k]` matrix of item indices, as returned by
  `top_k_scores` / `top_k_from_scores`, and a sparse `[U, I]` matrix of relevant items.

Per user, with `hits` the relevant items among the first k recommendations and `rel` the
user's relevant items: precision = |hits| / k; recall = |hits| / |rel| (not capped at k);
nDCG = DCG / IDCG with DCG = sum over hits of 1 / log2(rank + 1) and IDCG over
min(k, |rel|) ideal ranks; map = sum over hits of (hits so far / rank) / |rel| (the
benchmark's MAP, MS `map`); map_at_k = the same sum / min(k, |rel|); hit_rate = 1 if any hit.
Each is averaged over the users present both in the ground truth and in the recommendations.
coverage = distinct items in anyone's top k / number of candidate items.

Two deliberate choices, where MS leaves room: duplicate (user, item) rows in the ground truth
count once, and nDCG averages over the common users like every other metric (recent MS
versions average nDCG over all ground-truth users; the benchmark has the same users in both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.evaluation.baselines import (
    DEFAULT_EASE_GRID,
    DEFAULT_KNN_GRID,
    EASE,
    EASE_MAX_DIM,
    ItemKNN,
    MostPopular,
    PopularityByFeature,
    similarity_baseline,
    tune_ease,
    tune_item_knn,
)
from twotower_utils.evaluation.ranking import (
    METRICS,
    check_k_values,
    check_metrics,
    coverage,
    hit_matrix,
    hits_metrics,
    ranking_metrics,
)
from twotower_utils.evaluation.topk import top_k_from_scores, top_k_scores

__all__ = [
    "METRICS",
    "DEFAULT_EASE_GRID",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mean_average_precision",
    "map_at_k",
    "hit_rate_at_k",
    "catalog_coverage",
    "evaluate_recommendations",
    "recommendations_frame",
    "ranking_metrics",
    "top_k_scores",
    "top_k_from_scores",
    "MostPopular",
    "PopularityByFeature",
    "EASE",
    "tune_ease",
    "ItemKNN",
    "tune_item_knn",
    "DEFAULT_KNN_GRID",
    "EASE_MAX_DIM",
    "similarity_baseline",
    "compare_models",
]

_USER, _ITEM, _SCORE, _RANK = "user_id", "item_id", "score", "rank"


def _ranked(
    rating_pred: pd.DataFrame,
    k: int,
    col_user: str,
    col_prediction: str,
    relevancy_method: str | None,
    threshold: int,
) -> pd.DataFrame:
    """Each user's first k predictions with 1-based ranks (MS `get_top_k_items`)."""
    if relevancy_method == "top_k":
        top = k
    elif relevancy_method == "by_threshold":
        top = threshold
    elif relevancy_method is None:
        top = None
    else:
        raise ValueError(
            f"relevancy_method = {relevancy_method!r}: expected 'top_k', 'by_threshold' or None"
        )
    if top is None:
        ranked = rating_pred.copy()
    else:
        # Equal scores keep their input order: pandas sorts on several columns stably, and MS
        # relies on that.
        ranked = (
            rating_pred.sort_values(
                [col_user, col_prediction], ascending=[True, False], kind="stable"
            )
            .groupby(col_user, sort=False)
            .head(top)
        )
    ranked[_RANK] = ranked.groupby(col_user, sort=False).cumcount() + 1
    return ranked


def _top_idx(rating_pred: pd.DataFrame, items: pd.Index, k: int, col_user: str,
             col_item: str, col_prediction: str, relevancy_method: str | None,
             threshold: int) -> tuple[pd.Index, np.ndarray]:
    """`(users, top_idx)`: row u of the int `[U, L]` matrix is the ranked list (`_ranked`, L
    = the longest, -1 padded) of `users[u]`, every distinct user of `rating_pred`, as
    positions in `items`."""
    users = pd.Index(pd.unique(rating_pred[col_user]))
    ranked = _ranked(rating_pred[[col_user, col_item, col_prediction]], k, col_user,
                     col_prediction, relevancy_method, threshold)
    width = int(ranked[_RANK].max()) if len(ranked) else 0
    top_idx = np.full((len(users), width), -1, dtype=np.int64)
    top_idx[users.get_indexer(ranked[col_user]), ranked[_RANK].to_numpy() - 1] = (
        items.get_indexer(ranked[col_item]))
    return users, top_idx


def _items(rating_true: pd.DataFrame, rating_pred: pd.DataFrame, col_item: str) -> pd.Index:
    """The distinct items of both frames: the columns of `_as_arrays`' matrices."""
    return pd.Index(pd.unique(pd.concat([rating_true[col_item], rating_pred[col_item]],
                                        ignore_index=True)))


def _as_arrays(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int,
    col_user: str,
    col_item: str,
    col_prediction: str,
    relevancy_method: str | None = "top_k",
    threshold: int = 10,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """The frames as the array API's inputs: `(top_idx, relevant)`.

    Row u is the u-th distinct user of `rating_pred` (every one, for coverage), column j the
    j-th distinct item of `rating_true` and `rating_pred` together (so the default catalogue
    of `catalog_coverage` is the column count). `top_idx` `[U, L]` holds each user's ranked
    list (see `_top_idx`); `relevant` `[U, I]` the ground truth (duplicate rows count once;
    users absent from `rating_pred` are left out, as they are from the averages).
    """
    for frame, name, cols in (
        (rating_true, "rating_true", (col_user, col_item)),
        (rating_pred, "rating_pred", (col_user, col_item, col_prediction)),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")
    for col in (col_user, col_item):
        if pd.api.types.is_numeric_dtype(rating_true[col]) != pd.api.types.is_numeric_dtype(
            rating_pred[col]
        ):
            raise ValueError(
                f"column {col!r} is {rating_true[col].dtype} in rating_true but "
                f"{rating_pred[col].dtype} in rating_pred: ids would never match"
            )
    items = _items(rating_true, rating_pred, col_item)
    users, top_idx = _top_idx(rating_pred, items, k, col_user, col_item, col_prediction,
                              relevancy_method, threshold)
    truth = rating_true[rating_true[col_user].isin(users)]
    relevant = sp.csr_matrix(
        (np.ones(len(truth)), (users.get_indexer(truth[col_user]),
                               items.get_indexer(truth[col_item]))),
        shape=(len(users), len(items)),
    )
    relevant.sum_duplicates()
    return top_idx, relevant


def _frame_metrics(rating_true, rating_pred, k, *columns, relevancy_method="top_k",
                   threshold=10) -> dict[str, float]:
    """`hits_metrics` of the users in both frames, every listed rank counting (MS: with
    "by_threshold" or None the list may be longer than k)."""
    top_idx, relevant = _as_arrays(rating_true, rating_pred, k, *columns, relevancy_method,
                                   threshold)
    hit, actual = hit_matrix(top_idx, relevant)
    evaluated = actual > 0
    return hits_metrics(hit[evaluated], actual[evaluated], k)


_DF_ARGS_DOC = """
    Args:
        rating_true: ground truth, one row per relevant (user, item).
        rating_pred: recommendations, one row per (user, item) with a score; equal scores
            keep their input order.
        k: cut-off.
        col_user, col_item, col_prediction: column names.
        relevancy_method: "top_k" (default: each user's k best-scored rows), "by_threshold"
            (the `threshold` best) or None (rows are already each user's ordered list).
        threshold: list length for "by_threshold".

    Returns:
        The metric averaged over users present in both frames (0.0 if there are none)."""


def _make_df_metric(metric: str, name: str, summary: str) -> Callable[..., float]:
    """A public DataFrame metric function `name` computing `metric` (shares one docstring)."""

    def function(
        rating_true: pd.DataFrame,
        rating_pred: pd.DataFrame,
        k: int = 10,
        col_user: str = _USER,
        col_item: str = _ITEM,
        col_prediction: str = _SCORE,
        relevancy_method: str | None = "top_k",
        threshold: int = 10,
    ) -> float:
        columns = (col_user, col_item, col_prediction)
        return _frame_metrics(rating_true, rating_pred, k, *columns,
                              relevancy_method=relevancy_method, threshold=threshold)[metric]

    function.__name__ = function.__qualname__ = name
    function.__doc__ = summary + "\n" + _DF_ARGS_DOC
    return function


precision_at_k = _make_df_metric(
    "precision", "precision_at_k", "Precision@k: hits in the top k / k."
)
recall_at_k = _make_df_metric(
    "recall", "recall_at_k", "Recall@k: hits in the top k / |relevant| (not capped at k)."
)
ndcg_at_k = _make_df_metric(
    "ndcg", "ndcg_at_k", "nDCG@k, binary relevance, IDCG over min(k, |relevant|) ranks."
)
mean_average_precision = _make_df_metric(
    "map",
    "mean_average_precision",
    "MAP as MS `map` (the benchmark's): sum of precision at each hit / |relevant|.",
)
map_at_k = _make_df_metric(
    "map_at_k", "map_at_k", "MAP@k: sum of precision at each hit / min(k, |relevant|)."
)
hit_rate_at_k = _make_df_metric(
    "hit_rate", "hit_rate_at_k", "Hit rate@k: share of users with a hit in the top k."
)


def catalog_coverage(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = 10,
    col_user: str = _USER,
    col_item: str = _ITEM,
    col_prediction: str = _SCORE,
    num_items: int | None = None,
    relevancy_method: str | None = "top_k",
    threshold: int = 10,
) -> float:
    """Coverage@k: distinct items in any user's top k / number of candidate items.

    Every user of `rating_pred` counts, evaluated or not. `num_items` is the candidate
    catalogue size; when None, the distinct items of `rating_true` and `rating_pred` together
    stand in for it. Returns a float in [0, 1] (0.0 for an empty catalogue).
    """
    items = _items(rating_true, rating_pred, col_item)
    _, top_idx = _top_idx(rating_pred, items, k, col_user, col_item, col_prediction,
                          relevancy_method, threshold)
    return coverage(top_idx, len(items) if num_items is None else num_items)


def evaluate_recommendations(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k_values: Sequence[int] = (10,),
    metrics: Sequence[str] = METRICS,
    num_items: int | None = None,
    col_user: str = _USER,
    col_item: str = _ITEM,
    col_prediction: str = _SCORE,
) -> dict[str, float]:
    """All requested metrics at every cut-off, from DataFrames (top-k relevancy).

    Args:
        rating_true, rating_pred, col_*: as in `precision_at_k`.
        k_values: cut-offs.
        metrics: names from `METRICS`.
        num_items: candidate catalogue size for coverage (see `catalog_coverage`).

    Returns:
        `{"<metric>@<k>": value}`, e.g. "ndcg@10", in metric-then-k order.
    """
    metrics, k_values = check_metrics(metrics), check_k_values(k_values)
    top_idx, relevant = _as_arrays(rating_true, rating_pred, max(k_values), col_user, col_item,
                                   col_prediction)
    if top_idx.shape[1] < max(k_values):  # lists shorter than k: pad the empty slots
        top_idx = np.pad(top_idx, ((0, 0), (0, max(k_values) - top_idx.shape[1])),
                         constant_values=-1)
    return ranking_metrics(top_idx, relevant, k_values, metrics, num_items)


def recommendations_frame(
    top_idx: np.ndarray,
    top_scores: np.ndarray | None = None,
    col_user: str = _USER,
    col_item: str = _ITEM,
    col_prediction: str = _SCORE,
) -> pd.DataFrame:
    """Long DataFrame of a `[U, k]` top-k matrix: user (row index), item, score, rank.

    Empty slots (item -1) are dropped. Without scores, `col_prediction` is -rank, so the
    DataFrame metrics read the same order. Returns columns col_user, col_item,
    col_prediction, "rank".
    """
    top_idx = np.asarray(top_idx)
    n_users, k = top_idx.shape
    ranks = np.tile(np.arange(1, k + 1), n_users)
    scores = -ranks.astype(np.float64) if top_scores is None else np.asarray(top_scores).ravel()
    frame = pd.DataFrame(
        {
            col_user: np.repeat(np.arange(n_users), k),
            col_item: top_idx.ravel().astype(np.int64),
            col_prediction: scores,
            _RANK: ranks,
        }
    )
    return frame[frame[col_item] >= 0].reset_index(drop=True)


def compare_models(
    results: dict[str, dict[str, float]],
    fit_times: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Side-by-side table of models' metrics.

    Args:
        results: `{model name: {"ndcg@10": value, ...}}`, e.g. `ranking_metrics` outputs.
        fit_times: optional `{model name: seconds}`.

    Returns:
        DataFrame indexed by model (index name "model"), one column per metric in first-seen
        order, plus "fit_seconds" (NaN where unknown).
    """
    columns = list(dict.fromkeys(key for metrics in results.values() for key in metrics))
    table = pd.DataFrame.from_dict(results, orient="index").reindex(columns=columns)
    fit_times = fit_times or {}
    table["fit_seconds"] = [fit_times.get(name, np.nan) for name in table.index]
    table.index.name = "model"
    return table
