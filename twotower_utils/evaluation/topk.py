"""Exact full-catalogue top-k over user and item index arrays (numpy/scipy only).

Scores are computed for a chunk of users at a time, so memory stays at
`chunk_size x num_items` whatever the number of users. Within a user's list, items are
ordered by descending score and equal scores by ascending item index; slots that cannot be
filled (fewer than k allowed items) hold item -1 with score -inf.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

__all__ = ["top_k_scores", "top_k_from_scores"]


def top_k_scores(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None = None,
    candidates: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user by dot product, over the whole catalogue.

    Args:
        user_vectors: `[U, d]` user embeddings, row = user index.
        item_vectors: `[I, d]` item embeddings, row = item index.
        k: list length per user.
        exclude: optional sparse `[U, I]` matrix; a stored entry (u, i) means item i is never
            returned for user u (typically the user's training items).
        candidates: optional bool mask `[I]` of the items that may be returned (e.g. the items
            seen in training, with False for the out-of-vocabulary row 0).
        chunk_size: users scored per matrix product.

    Returns:
        `(top_idx, top_scores)`: int32 `[U, k]` item indices and float32 `[U, k]` scores,
        best first, ties broken by the lower item index, -1 / -inf where fewer than k items
        are allowed.
    """
    user_vectors = np.asarray(user_vectors)
    item_vectors = np.asarray(item_vectors)
    if user_vectors.ndim != 2 or item_vectors.ndim != 2:
        raise ValueError("user_vectors and item_vectors must be 2-D [n, d] arrays")
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise ValueError(
            f"embedding sizes differ: users {user_vectors.shape[1]}, items {item_vectors.shape[1]}"
        )
    items_t = np.ascontiguousarray(item_vectors.T)

    def score_fn(users: np.ndarray) -> np.ndarray:
        return user_vectors[users] @ items_t

    return top_k_from_scores(
        score_fn,
        user_vectors.shape[0],
        k,
        exclude=exclude,
        candidates=candidates,
        chunk_size=chunk_size,
        num_items=item_vectors.shape[0],
    )


def top_k_from_scores(
    score_fn: Callable[[np.ndarray], np.ndarray],
    num_users: int,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None = None,
    candidates: np.ndarray | None = None,
    chunk_size: int = 1024,
    num_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user from any dense scorer (EASE, popularity, a model).

    Args:
        score_fn: called with an int array of user indices, returns their `[len, I]` scores;
            it is called once per chunk, for users 0..num_users-1 in order.
        num_users: number of users (rows of the result).
        k, exclude, candidates, chunk_size: as in `top_k_scores`.
        num_items: expected catalogue size; checked against the scores when given.

    Returns:
        `(top_idx, top_scores)`: int32 `[num_users, k]` and float32 `[num_users, k]`, as in
        `top_k_scores`.
    """
    if k < 1:
        raise ValueError(f"k = {k}: expected k >= 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size}: expected chunk_size >= 1")
    if exclude is not None:
        exclude = sp.csr_matrix(exclude)
        if exclude.shape[0] != num_users:
            raise ValueError(f"exclude has {exclude.shape[0]} rows, expected {num_users} users")
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=bool)

    top_idx = np.full((num_users, k), -1, dtype=np.int32)
    top_scores = np.full((num_users, k), -np.inf, dtype=np.float32)
    for start in range(0, num_users, chunk_size):
        users = np.arange(start, min(start + chunk_size, num_users))
        # A private copy: masking writes into it, and a scorer may hand back a shared array.
        scores = np.array(score_fn(users))
        if not np.issubdtype(scores.dtype, np.floating):
            scores = scores.astype(np.float32)
        if scores.shape[0] != len(users) or (
            num_items is not None and scores.shape[1] != num_items
        ):
            raise ValueError(
                f"score_fn returned shape {scores.shape}, expected ({len(users)}, "
                f"{num_items if num_items is not None else 'num_items'})"
            )
        if candidates is not None:
            if candidates.shape != (scores.shape[1],):
                raise ValueError(
                    f"candidates has shape {candidates.shape}, expected ({scores.shape[1]},)"
                )
            scores[:, ~candidates] = -np.inf
        if exclude is not None:
            if exclude.shape[1] != scores.shape[1]:
                raise ValueError(
                    f"exclude has {exclude.shape[1]} columns, expected {scores.shape[1]} items"
                )
            block = exclude[users[0] : users[-1] + 1]
            rows = np.repeat(np.arange(len(users)), np.diff(block.indptr))
            scores[rows, block.indices] = -np.inf
        idx, vals = _select_top_k(scores, min(k, scores.shape[1]))
        top_idx[start : start + len(users), : idx.shape[1]] = idx
        top_scores[start : start + len(users), : idx.shape[1]] = vals
    # An excluded or non-candidate item is not a recommendation, even if it would fill a slot.
    top_idx[np.isneginf(top_scores)] = -1
    return top_idx, top_scores


def _select_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of a 2-D score array: (int32 indices, float32 scores), best first,
    ties to the lower index; NaN ranks below every number."""
    n = scores.shape[0]
    rows = np.arange(n)[:, None]
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        threshold = scores[rows, part].min(axis=1)
        # argpartition picks arbitrarily among items tied at the boundary score; redo the rows
        # where that choice matters so that lower item indices win, as documented.
        at_or_above = (scores >= threshold[:, None]).sum(axis=1)
        ambiguous = np.flatnonzero(at_or_above > k)
        if len(ambiguous):
            sub = scores[ambiguous]
            t = threshold[ambiguous][:, None]
            above = sub > t
            need = k - above.sum(axis=1)
            tied = sub == t
            keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need[:, None]))
            part[ambiguous] = np.nonzero(keep)[1].reshape(len(ambiguous), k)
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = scores[rows, part]
    order = np.lexsort((part, -vals), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    return part.astype(np.int32), np.take_along_axis(vals, order, axis=1).astype(np.float32)
