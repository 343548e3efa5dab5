"""The raw-data contract shared by every dataset source: `RawDataset`, its error type, and
atomic writing of the three CSVs (`users.csv`, `items.csv`, `interactions.csv`).

Kept apart from `datasets.py` so that the source modules (`movielens.py`, `synthetic.py`) can
use it without importing each other. Only numpy, pandas and the standard library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.io import atomic_directory, write_json

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
    loading did (rows dropped, where the data came from).
    """

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    user_features: dict[str, str]
    item_features: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # The default dataclass repr would print three whole DataFrames.
        return (
            f"RawDataset(name={self.name!r}, users={len(self.users)}, items={len(self.items)}, "
            f"interactions={len(self.interactions)}, user_features={self.user_features}, "
            f"item_features={self.item_features}, notes={len(self.notes)})"
        )


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
