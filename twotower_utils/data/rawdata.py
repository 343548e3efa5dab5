"""The raw-data contract shared by every dataset source: `RawDataset`, its error type, and
atomic writing of the three CSVs (`users.csv`, `items.csv`, `interactions.csv`).

Kept apart from `datasets.py` so that the source modules (`movielens.py`, `synthetic.py`) can
use it without importing each other. Only numpy, pandas and the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.io import atomic_directory, write_json
from twotower_utils.logs import report

CSV_NAMES = ("users.csv", "items.csv", "interactions.csv")
MANIFEST_NAME = "manifest.json"
# The same dtype pandas gives `read_csv(dtype=str)`, so generated and read ids compare equal.
STR_DTYPE = pd.StringDtype(na_value=np.nan)


class DataValidationError(ValueError):
    """Input data that breaks the data contract; the message names file, column, row and fix."""


@dataclass
class RawDataset:
    """Three DataFrames that follow the data contract (docs/architecture.md, "Raw data").

    `users`: `user_id` (str) + feature columns; `items`: `item_id` (str) + feature columns
    (extra columns such as MovieLens' `title` are kept for display, not used as features);
    `interactions`: `user_id`, `item_id` (str), `label` (int8, 1 = interacted, 0 = explicit
    negative), optional `timestamp` (int64 seconds) and `rating` (float32), in source order.
    `user_features`/`item_features` map a column to "categorical", "numeric" or "multi_hot"
    (multi-hot values are "|"-separated strings). `notes` are human-readable lines about what
    loading did (rows dropped or changed, where the data came from); `hygiene` counts what
    `resolve_pairs` collapsed (duplicate and conflicting (user, item) rows); `labels` says how
    the labels were made (`data.label` and the counts it produced, before duplicates are
    collapsed; empty when the source's own labels were kept as they are); `unused_columns`
    names, per file ("users", "items", "interactions"), the columns the data stage ignores.
    """

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    user_features: dict[str, str]
    item_features: dict[str, str]
    notes: list[str] = field(default_factory=list)
    hygiene: dict[str, int] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    unused_columns: dict[str, list[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The default dataclass repr would print three whole DataFrames.
        return (
            f"RawDataset(name={self.name!r}, users={len(self.users)}, items={len(self.items)}, "
            f"interactions={len(self.interactions)}, user_features={self.user_features}, "
            f"item_features={self.item_features}, notes={len(self.notes)})"
        )


DUPLICATE_POLICIES = ("keep_latest", "keep_first", "error")
CONFLICT_POLICIES = ("positive_wins", "latest_wins", "error")


def resolve_pairs(
    interactions: pd.DataFrame,
    duplicates: str = "keep_latest",
    conflicting_labels: str = "positive_wins",
    notes: list[str] | None = None,
    source: str = "interactions",
    where: Callable[[list[int]], str] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Leave one row per (user, item) pair, by the documented policies; count what changed.

    Takes the interactions (`user_id`, `item_id`, `label`, optional `timestamp`, in file
    order), the policy for a pair labelled both 1 and 0 (`conflicting_labels`:
    "positive_wins" drops the pair's label-0 rows; "latest_wins" keeps the label of its latest
    row, by timestamp, else file order; "error" refuses), then the policy for repeated rows of
    one pair (`duplicates`: "keep_latest" keeps the row with the latest timestamp, or the last
    in file order without timestamps; "keep_first" the earliest, or the first; "error"
    refuses). Ties in time go to file order. What is dropped is logged and appended to
    `notes`; `source` names the file in messages and `where(positions)` describes 0-based row
    positions (default "rows 3 and 8", 1-based). Returns the interactions (kept rows in file
    order, their index kept so callers can still name file rows) and the counts
    `conflicting_pairs`, `conflicting_rows_removed`, `duplicate_pairs`,
    `duplicate_rows_removed`. Raises `DataValidationError` under "error" naming the first
    offending pair, its rows and the fix.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"data.duplicates = {duplicates!r}: expected one of "
                         f"{', '.join(map(repr, DUPLICATE_POLICIES))}")
    if conflicting_labels not in CONFLICT_POLICIES:
        raise ValueError(f"data.conflicting_labels = {conflicting_labels!r}: expected one of "
                         f"{', '.join(map(repr, CONFLICT_POLICIES))}")
    where = where or (lambda rows: "rows " + " and ".join(str(r + 1) for r in rows))
    counts = {"conflicting_pairs": 0, "conflicting_rows_removed": 0, "duplicate_pairs": 0,
              "duplicate_rows_removed": 0}
    frame = interactions
    users = pd.factorize(frame["user_id"])[0].astype(np.int64)
    items = pd.factorize(frame["item_id"])[0].astype(np.int64)
    keys = users * (int(items.max(initial=0)) + 1) + items
    # Most datasets hold each pair once: one sort proves it, and the slower grouping below
    # runs only on the rows of repeated pairs.
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any():
        return frame, counts
    repeated = np.flatnonzero(pd.Series(keys).duplicated(keep=False).to_numpy())
    times = (frame["timestamp"].to_numpy(np.int64)[repeated]
             if "timestamp" in frame.columns else np.zeros(len(repeated), np.int64))
    # Rows of one pair, earliest first (time, then file order): the last is the latest.
    order = np.lexsort((repeated, times, keys[repeated]))
    rows, pair = repeated[order], keys[repeated][order]
    labels = frame["label"].to_numpy()[rows]
    starts = np.r_[0, np.flatnonzero(pair[1:] != pair[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(rows)])
    group = np.repeat(np.arange(len(starts)), sizes)
    positives = np.bincount(group, weights=labels == 1, minlength=len(starts))
    conflict = (positives > 0) & (positives < sizes)
    drop = np.zeros(len(rows), dtype=bool)
    if conflict.any():
        first_rows = np.minimum.reduceat(rows, starts)
        first = int(np.flatnonzero(conflict)[np.argmin(first_rows[conflict])])
        members, member_labels = rows[group == first], labels[group == first]
        one, zero = (int(members[member_labels == v].min()) for v in (1, 0))
        example = (f"user {frame['user_id'].iloc[one]!r}, item {frame['item_id'].iloc[one]!r}: "
                   f"label 1 at {where([one])}, label 0 at {where([zero])}")
        if conflicting_labels == "error":
            raise DataValidationError(
                f"{source}: {int(conflict.sum()):,} (user, item) pair(s) are labelled both 1 "
                f"and 0 (first: {example}); remove one of the rows, or set "
                "data.conflicting_labels to 'positive_wins' or 'latest_wins'"
            )
        in_conflict = conflict[group]
        if conflicting_labels == "positive_wins":
            winner = np.ones(len(starts), dtype=labels.dtype)
            rule = "label 1 wins: the pairs count as interactions"
        else:
            winner = labels[starts + sizes - 1]
            rule = "the label of each pair's latest row wins"
        drop = in_conflict & (labels != winner[group])
        counts["conflicting_pairs"] = int(conflict.sum())
        counts["conflicting_rows_removed"] = int(drop.sum())
        report(notes, f"{source}: {counts['conflicting_pairs']:,} (user, item) pair(s) labelled "
                      f"both 1 and 0 (first: {example}); dropped "
                      f"{counts['conflicting_rows_removed']:,} row(s) "
                      f"(data.conflicting_labels = {conflicting_labels!r}: {rule})")
    # Among the rows left, one per pair: the latest (last of its group) or the earliest.
    kept_rows, kept_pair = rows[~drop], pair[~drop]
    new_group = np.r_[True, kept_pair[1:] != kept_pair[:-1]]
    last = np.r_[kept_pair[1:] != kept_pair[:-1], True]
    chosen = last if duplicates != "keep_first" else new_group
    extra = kept_rows[~chosen]
    if extra.size:
        dup_starts = np.flatnonzero(new_group)
        sizes_left = np.diff(np.r_[dup_starts, len(kept_rows)])
        first_rows = np.where(sizes_left > 1, np.minimum.reduceat(kept_rows, dup_starts),
                              len(frame))
        first_group = int(np.argmin(first_rows))
        span = slice(dup_starts[first_group], dup_starts[first_group] + sizes_left[first_group])
        members = np.sort(kept_rows[span])[:2].tolist()
        example = (f"user {frame['user_id'].iloc[members[0]]!r}, item "
                   f"{frame['item_id'].iloc[members[0]]!r} at {where(members)}")
        counts["duplicate_pairs"] = int((sizes_left > 1).sum())
        counts["duplicate_rows_removed"] = int(extra.size)
        if duplicates == "error":
            raise DataValidationError(
                f"{source}: {counts['duplicate_pairs']:,} (user, item) pair(s) appear more than "
                f"once ({counts['duplicate_rows_removed']:,} extra row(s); first: {example}); "
                "keep one row per pair, or set data.duplicates to 'keep_latest' or 'keep_first'"
            )
        rule = ("the row with the latest timestamp is kept" if "timestamp" in frame.columns
                else "the last row in file order is kept")
        if duplicates == "keep_first":
            rule = rule.replace("latest", "earliest").replace("last", "first")
        report(notes, f"{source}: removed {counts['duplicate_rows_removed']:,} duplicate "
                      f"row(s) of {counts['duplicate_pairs']:,} (user, item) pair(s) before the "
                      f"split (first: {example}; data.duplicates = {duplicates!r}: {rule})")
    removed = np.r_[rows[drop], extra]
    if removed.size:
        keep = np.ones(len(frame), dtype=bool)
        keep[removed] = False
        frame = frame[keep]
    return frame, counts


def as_str_series(values: Any, index: pd.Index | None = None) -> pd.Series:
    """Return `values` (array-like of str, or a pyarrow string array) as a `str`-dtype Series."""
    return pd.Series(values, index=index, dtype=STR_DTYPE)


def write_dataset(
    raw: RawDataset, directory: str | Path, *, manifest: dict[str, Any] | None = None
) -> Path:
    """Write `raw` as `users.csv`, `items.csv`, `interactions.csv` and `manifest.json`.

    The directory is replaced atomically (temporary directory + rename). `manifest.json` holds
    the name, feature declarations, row counts, notes and any extra `manifest` entries; its
    presence marks a finished write. Returns the directory as an absolute Path.
    """
    directory = Path(directory).resolve()
    info = {
        "name": raw.name,
        "user_features": raw.user_features,
        "item_features": raw.item_features,
        "rows": {"users": len(raw.users), "items": len(raw.items),
                 "interactions": len(raw.interactions)},
        "notes": list(raw.notes),
        **(manifest or {}),
    }
    with atomic_directory(directory) as tmp:
        for name, frame in zip(CSV_NAMES, (raw.users, raw.items, raw.interactions), strict=True):
            _csv_ready(frame).to_csv(tmp / name, index=False)
        # Written last: a directory with a manifest is a complete one.
        write_json(tmp / MANIFEST_NAME, info)
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """Return the parsed `manifest.json` of a dataset directory, or None when absent/unreadable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    # Whole-number float columns (ratings, years with gaps) are written as integers: "3" and
    # "1995" rather than "3.0" and "1995.0", so the CSVs read like their source and round-trip.
    out = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values.dtype):
            array = values.to_numpy()
            finite = np.isfinite(array)
            whole = finite.any() and (finite | np.isnan(array)).all() and np.array_equal(
                array[finite], np.round(array[finite])
            )
            if whole and np.abs(array[finite]).max() < 2**53:
                values = values.astype("Int64")
        out[column] = values
    return pd.DataFrame(out, index=frame.index)
