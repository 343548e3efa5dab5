"""Ranking metrics over top-k index matrices, vectorised over users (numpy/scipy only).

The one implementation of the metric formulas: `ranking_metrics` (and `hits_metrics`, the
formulas over a per-user hit matrix, and `coverage`). The definitions (binary relevance,
Microsoft Recommenders' `python_evaluation`) are spelled out in
`twotower_utils.evaluation.metrics`, whose DataFrame functions are an adapter that turns the
frames into these arrays, so the two paths cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from twotower_utils.config import METRICS

__all__ = ["METRICS", "ranking_metrics", "hit_matrix", "hits_metrics", "user_metrics",
           "coverage", "check_metrics", "check_k_values"]


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """The metric names as a tuple; ValueError naming the allowed ones if any is unknown."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics = {metrics!r}: expected a non-empty subset of {METRICS}")
    return metrics


def check_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs as a tuple of ints; ValueError unless non-empty and all >= 1."""
    k_values = tuple(int(k) for k in k_values)
    if not k_values or any(k < 1 for k in k_values):
        raise ValueError(f"k_values = {k_values!r}: expected integers >= 1")
    return k_values


def user_metrics(
    hits: np.ndarray, actual: np.ndarray, dcg: np.ndarray, ap: np.ndarray, k: int
) -> dict[str, float]:
    """Metric averages over evaluated users from per-user arrays.

    Takes, per user: hits in the top k, |relevant|, DCG, and the AP numerator (sum over hits
    of hits-so-far / rank). Returns {"precision", "recall", "ndcg", "map", "map_at_k",
    "hit_rate"} -> float, all 0.0 when there are no users.
    """
    if len(actual) == 0:
        # MS returns 0.0 when no user can be scored rather than NaN.
        return dict.fromkeys(("precision", "recall", "ndcg", "map", "map_at_k", "hit_rate"), 0.0)
    actual = actual.astype(np.float64)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    capped = np.minimum(actual, k)
    return {
        "precision": float(np.mean(hits / k)),
        "recall": float(np.mean(hits / actual)),
        "ndcg": float(np.mean(dcg / ideal[capped.astype(np.int64)])),
        "map": float(np.mean(ap / actual)),
        "map_at_k": float(np.mean(ap / capped)),
        "hit_rate": float(np.mean(hits > 0)),
    }


def hit_matrix(top_idx: np.ndarray, relevant: sp.spmatrix | sp.sparray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Which recommended slots are relevant.

    Takes an int `[U, K]` top-k matrix (-1 = empty slot) and a sparse `[U, I]` matrix of
    relevant items (duplicates and explicit zeros ignored). Returns `(hit, actual)`: bool
    `[U, K]` (slot holds one of the user's relevant items) and int `[U]` (|relevant|).
    """
    top_idx = np.asarray(top_idx)
    relevant = sp.csr_matrix(relevant, copy=True)
    relevant.sum_duplicates()
    relevant.eliminate_zeros()
    n_users, n_items = relevant.shape
    valid = top_idx >= 0
    actual = np.diff(relevant.indptr)
    # One sorted key per (user, item) turns per-user set membership into one searchsorted.
    rel_keys = np.repeat(np.arange(n_users, dtype=np.int64), actual) * n_items + relevant.indices
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top_idx
    pos = np.minimum(np.searchsorted(rel_keys, keys), max(len(rel_keys) - 1, 0))
    hit = valid & (rel_keys[pos] == keys) if len(rel_keys) else np.zeros_like(valid)
    return hit, actual


def hits_metrics(hit: np.ndarray, actual: np.ndarray, k: int) -> dict[str, float]:
    """The metric formulas (all but coverage) from a hit matrix of the evaluated users.

    Takes bool `[n, depth]` (column r = rank r + 1; every column counts, so pass the first k
    columns for "@k"), |relevant| per user (`[n]`) and the cut-off k (precision's divisor,
    IDCG and map_at_k over min(k, |relevant|) ranks). Returns `user_metrics`' dict.
    """
    h = np.asarray(hit, dtype=np.float64)
    ranks = np.arange(1, h.shape[1] + 1)
    return user_metrics(h.sum(axis=1), actual, (h / np.log2(ranks + 1.0)).sum(axis=1),
                        (np.cumsum(h, axis=1) / ranks * h).sum(axis=1), k)


def coverage(top_idx: np.ndarray, num_items: int) -> float:
    """Distinct items in any row of the int `[U, K]` top-k matrix (-1 = empty slot) /
    `num_items`; 0.0 when `num_items` is 0."""
    top_idx = np.asarray(top_idx)
    return len(np.unique(top_idx[top_idx >= 0])) / num_items if num_items else 0.0


def ranking_metrics(
    top_idx: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    k_values: Sequence[int] = (10,),
    metrics: Sequence[str] = METRICS,
    num_items: int | None = None,
) -> dict[str, float]:
    """Ranking metrics from a top-k index matrix, vectorised over users.

    Args:
        top_idx: int `[U, K]`, row u = user u's recommended item indices, best first; -1 marks
            an empty slot. A row with no item is a user absent from the recommendations.
        relevant: sparse `[U, I]`, stored entries = the user's relevant (e.g. test) items.
            Users with none are left out of the averages.
        k_values: cut-offs, each <= K.
        metrics: names from `METRICS`.
        num_items: candidate catalogue size for coverage; default I.

    Returns:
        `{"<metric>@<k>": value}`, equal to `evaluate_recommendations` on the same data.
    """
    metrics, k_values = check_metrics(metrics), check_k_values(k_values)
    top_idx = np.asarray(top_idx)
    if top_idx.ndim != 2:
        raise ValueError(f"top_idx must be [users, k]; got shape {top_idx.shape}")
    n_users, width = top_idx.shape
    n_items = relevant.shape[1]
    if relevant.shape[0] != n_users:
        raise ValueError(f"relevant has {relevant.shape[0]} rows, top_idx {n_users}")
    if max(k_values) > width:
        raise ValueError(f"k_values = {k_values}: top_idx has only {width} columns")
    if top_idx.size and top_idx.max() >= n_items:
        raise ValueError(f"top_idx holds item {top_idx.max()}, relevant has {n_items} items")

    hit, actual = hit_matrix(top_idx, relevant)
    evaluated = (actual > 0) & (top_idx >= 0).any(axis=1)
    result: dict[int, dict[str, float]] = {}
    for k in k_values:
        result[k] = hits_metrics(hit[evaluated, :k], actual[evaluated], k)
        if "coverage" in metrics:
            total = n_items if num_items is None else num_items
            result[k]["coverage"] = coverage(top_idx[:, :k], total)
    return {f"{m}@{k}": result[k][m] for m in metrics for k in k_values}
