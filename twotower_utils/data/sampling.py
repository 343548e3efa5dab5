"""Negative sampling that never returns one of the user's training positives (numpy only)."""

from __future__ import annotations

import numpy as np

MAX_REJECTION_ROUNDS = 100


def item_sampling_probabilities(
    positive_items: np.ndarray, num_items: int, distribution: str, alpha: float
) -> np.ndarray:
    """Probability of drawing each item index (length `num_items`, index 0 = OOV never drawn).

    Only items seen among the positives can be drawn: uniformly, or in proportion to their
    positive count ** `alpha` for `distribution="popularity"`.
    """
    counts = np.bincount(positive_items, minlength=num_items).astype(np.float64)
    counts[0] = 0.0
    if distribution == "uniform":
        weights = (counts > 0).astype(np.float64)
    elif distribution == "popularity":
        weights = counts**alpha * (counts > 0)
    else:
        raise ValueError(
            f"data.negative_sampling = {distribution!r}: expected 'uniform' or 'popularity'"
        )
    total = weights.sum()
    if total <= 0:
        raise ValueError("no items to sample negatives from: the training split is empty")
    return weights / total


def sample_negatives(
    users: np.ndarray,
    positive_users: np.ndarray,
    positive_items: np.ndarray,
    num_items: int,
    distribution: str = "uniform",
    alpha: float = 0.75,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one negative item for each entry of `users`.

    `positive_users`/`positive_items` are the training pairs a user must never get back.
    Rejected draws are redrawn, vectorised, until none is left. Returns `(users, items)` as
    int64 arrays aligned with the input; raises ValueError if some user has interacted with
    every candidate item.
    """
    users = np.asarray(users, dtype=np.int64)
    probabilities = item_sampling_probabilities(
        np.asarray(positive_items, dtype=np.int64), num_items, distribution, alpha
    )
    forbidden = sorted_unique(
        np.asarray(positive_users, dtype=np.int64) * num_items
        + np.asarray(positive_items, dtype=np.int64)
    )
    rng = np.random.default_rng(seed)
    items = rng.choice(num_items, size=len(users), p=probabilities)
    pending = np.flatnonzero(_is_member(users * num_items + items, forbidden))
    for _ in range(MAX_REJECTION_ROUNDS):
        if pending.size == 0:
            return users, items
        items[pending] = rng.choice(num_items, size=pending.size, p=probabilities)
        still_bad = _is_member(users[pending] * num_items + items[pending], forbidden)
        pending = pending[still_bad]
    stuck = np.unique(users[pending])
    raise ValueError(
        f"could not sample negatives for user index(es) {stuck[:5].tolist()}: they have "
        "interacted with (almost) every item that can be sampled"
    )


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array, sorted (what `np.unique` returns).

    A sort and a comparison: numpy 2's `np.unique` hashes, which took 28 s on 10M distinct
    int64 keys here against 0.7 s for this.
    """
    ordered = np.sort(np.asarray(keys))
    if ordered.size < 2:
        return ordered
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


def _is_member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    positions = np.searchsorted(sorted_keys, keys)
    positions = np.minimum(positions, len(sorted_keys) - 1)
    return sorted_keys[positions] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
