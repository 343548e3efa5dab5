"""Train/test splits of positive interactions, all vectorised and deterministic per seed.

Each function takes the interactions (`user_id`, `item_id`, optional `timestamp`, in source
order) and returns a boolean numpy mask, True for rows that go to the training side.

`benchmark` reproduces Microsoft Recommenders' `python_stratified_split(ratio=0.75,
filter_by="item", seed=42)` exactly: numpy's legacy RNG seeded once draws one uniform number per
row in source order; within each item, rows ordered by that draw; the first
round(ratio * count) rows train (numpy rounds half to even, as the reference does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_FUNCTIONS = {}


def _register(name: str):
    def decorate(function):
        SPLIT_FUNCTIONS[name] = function
        return function

    return decorate


def _first_share_per_group(groups: np.ndarray, order_key: np.ndarray, ratio: float) -> np.ndarray:
    """True for the first round(ratio * size) rows of each group when ordered by `order_key`."""
    order = np.lexsort((order_key, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    rank_in_group = np.arange(len(order)) - np.repeat(starts, sizes)
    keep = rank_in_group < np.repeat(np.round(ratio * sizes), sizes)
    mask = np.empty(len(order), dtype=bool)
    mask[order] = keep
    return mask


def _stable_rank(values: np.ndarray) -> np.ndarray:
    """Rank of each value; equal values keep their source order."""
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


def _codes(interactions: pd.DataFrame, side: str) -> np.ndarray:
    """Group codes of the `side` ("user"/"item") ids: the `<side>_idx` column when present.

    Only the grouping matters to the per-group splits, not the codes' order, so the
    preprocessor's integer indices give the same masks as factorizing the id strings, without
    hashing millions of strings once more.
    """
    if f"{side}_idx" in interactions.columns:
        return interactions[f"{side}_idx"].to_numpy(np.int64)
    return pd.factorize(interactions[f"{side}_id"])[0]


def _timestamps(interactions: pd.DataFrame, method: str) -> np.ndarray:
    if "timestamp" not in interactions.columns:
        raise ValueError(
            f"split method {method!r} needs a 'timestamp' column in the interactions; "
            "use data.split.method = 'random' or 'benchmark' for data without time"
        )
    return interactions["timestamp"].to_numpy(dtype=np.float64)


@_register("benchmark")
def stratified_by_item(interactions: pd.DataFrame, ratio: float, seed: int) -> np.ndarray:
    """Per item, a random `ratio` of its rows train (the benchmark protocol when 0.75/42)."""
    draws = np.random.RandomState(seed).rand(len(interactions))
    return _first_share_per_group(_codes(interactions, "item"), draws, ratio)


@_register("random")
def random_per_user(interactions: pd.DataFrame, ratio: float, seed: int) -> np.ndarray:
    """Per user, a random `ratio` of their rows train."""
    draws = np.random.RandomState(seed).rand(len(interactions))
    return _first_share_per_group(_codes(interactions, "user"), draws, ratio)


@_register("temporal")
def temporal_per_user(interactions: pd.DataFrame, ratio: float, seed: int) -> np.ndarray:
    """Per user, the earliest `ratio` of their rows train (ties keep source order)."""
    del seed  # deterministic without randomness
    times = _timestamps(interactions, "temporal")
    return _first_share_per_group(_codes(interactions, "user"), _stable_rank(times), ratio)


@_register("leave_last_out")
def leave_last_out(interactions: pd.DataFrame, ratio: float, seed: int) -> np.ndarray:
    """Each user's last row (by timestamp, else source order) is held out, if they have two+."""
    del ratio, seed
    users = _codes(interactions, "user")
    if "timestamp" in interactions.columns:
        order_key = _stable_rank(interactions["timestamp"].to_numpy(np.float64))
    else:
        order_key = np.arange(len(users))
    order = np.lexsort((order_key, users))
    sorted_users = users[order]
    is_last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    group_size = np.bincount(users)[sorted_users]
    mask = np.ones(len(users), dtype=bool)
    mask[order[is_last & (group_size > 1)]] = False
    return mask


@_register("cold_items")
def cold_items(interactions: pd.DataFrame, ratio: float, seed: int) -> np.ndarray:
    """A random (1 - ratio) share of the items is held out whole: none of their rows train."""
    item_codes, items = pd.factorize(interactions["item_id"])
    shuffled = np.random.RandomState(seed).permutation(len(items))
    num_cold = max(1, int(round((1.0 - ratio) * len(items))))
    is_cold = np.zeros(len(items), dtype=bool)
    is_cold[shuffled[:num_cold]] = True
    return ~is_cold[item_codes]


def split_mask(interactions: pd.DataFrame, method: str, ratio: float, seed: int) -> np.ndarray:
    """Training mask of `interactions` for the named split `method` (see SPLIT_FUNCTIONS)."""
    if method not in SPLIT_FUNCTIONS:
        raise ValueError(
            f"data.split.method = {method!r}: expected one of {', '.join(SPLIT_FUNCTIONS)}"
        )
    return SPLIT_FUNCTIONS[method](interactions, ratio, seed)
