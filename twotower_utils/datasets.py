"""Dataset sources: MovieLens-100K, the user's own CSVs and a synthetic generator.

Every source ends as a `RawDataset` (three DataFrames that follow the data contract in
docs/architecture.md). `load_dataset(config)` picks the source named by `data.dataset`.
The MovieLens fetcher lives in `movielens.py`, the generator in `synthetic.py` and the shared
contract types in `rawdata.py`; this module re-exports them so callers need only this one.
No TensorFlow here: only numpy, pandas and the standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import FEATURE_TYPES
from twotower_utils.movielens import (
    ML100K_ITEM_FEATURES,
    ML100K_SHA256,
    ML100K_USER_FEATURES,
    DataSourceError,
    fetch_movielens_100k,
)
from twotower_utils.rawdata import (
    DataValidationError,
    RawDataset,
    read_manifest,
    write_dataset,
)
from twotower_utils.synthetic import (
    SYNTHETIC_ITEM_FEATURES,
    SYNTHETIC_USER_FEATURES,
    generate_synthetic,
)

__all__ = [
    "DataSourceError",
    "DataValidationError",
    "ML100K_ITEM_FEATURES",
    "ML100K_SHA256",
    "ML100K_USER_FEATURES",
    "RawDataset",
    "SYNTHETIC_ITEM_FEATURES",
    "SYNTHETIC_USER_FEATURES",
    "fetch_movielens_100k",
    "generate_synthetic",
    "load_dataset",
    "read_csv_dataset",
    "write_dataset",
]

MISSING_FEATURE_ROWS = ("drop", "keep")


def read_csv_dataset(
    users_csv: str | Path,
    items_csv: str | Path,
    interactions_csv: str | Path,
    user_features: dict[str, str] | None,
    item_features: dict[str, str] | None,
    missing_feature_rows: str = "drop",
    name: str = "csv",
) -> RawDataset:
    """Read and validate the three CSVs of the data contract into a `RawDataset`.

    Takes the paths of `users.csv` (`user_id` + features), `items.csv` (`item_id` + features)
    and `interactions.csv` (`user_id`, `item_id`, `label`, optional `timestamp`, `rating`), the
    declared features per side (`{column: "categorical"|"numeric"|"multi_hot"}`, None = ids
    only), what to do with interactions whose user or item has no feature row ("drop" or
    "keep"), and the dataset's name. Ids are read as strings ("007" stays "007"); declared
    numeric columns become numbers, other feature columns stay strings (missing = NaN).
    Interactions keep their file order and only the contract columns. Returns the RawDataset;
    raises `DataValidationError` naming the file, column, first offending row and the fix.
    """
    if missing_feature_rows not in MISSING_FEATURE_ROWS:
        raise ValueError(
            f"missing_feature_rows = {missing_feature_rows!r}: expected 'drop' or 'keep'"
        )
    user_features = _check_declaration(dict(user_features or {}), "user_features", "user_id")
    item_features = _check_declaration(dict(item_features or {}), "item_features", "item_id")
    paths = [Path(p) for p in (users_csv, items_csv, interactions_csv)]
    users = _read_side(paths[0], "user_id", user_features, "data.user_features")
    items = _read_side(paths[1], "item_id", item_features, "data.item_features")
    interactions, notes = _read_interactions(paths[2])
    interactions, more = _handle_missing_rows(
        interactions, users, items, paths, missing_feature_rows
    )
    return RawDataset(name, users, items, interactions, user_features, item_features,
                      notes + more)


def load_dataset(config: Any, *, log: Callable[[str], object] = print) -> RawDataset:
    """Load the dataset `config.data.dataset` names, as a `RawDataset`.

    Takes a `Config` (see config.py). "movielens-100k": fetched (or found cached) under
    `config.path("raw_dir")`, then read with `data.user_features`/`data.item_features`, or
    the MovieLens defaults when null. "synthetic": generated from `data.synthetic`; declared
    features must be columns the generator makes (null = all of them). "csv": `data.users_csv`
    etc., relative to the config's directory, features as declared (null = ids only).
    `data.missing_feature_rows` applies to the CSV-based sources; `log` gets progress lines.
    """
    data = config.data
    if data.dataset == "movielens-100k":
        local_dir = _resolve(config.root, data.ml100k_dir) if data.ml100k_dir else None
        directory = fetch_movielens_100k(config.path("raw_dir"), local_dir, log=log)
        raw = read_csv_dataset(
            directory / "users.csv", directory / "items.csv", directory / "interactions.csv",
            ML100K_USER_FEATURES if data.user_features is None else data.user_features,
            ML100K_ITEM_FEATURES if data.item_features is None else data.item_features,
            data.missing_feature_rows, name="movielens-100k",
        )
        raw.notes[:0] = (read_manifest(directory) or {}).get("notes", [])
        return raw
    if data.dataset == "synthetic":
        raw = generate_synthetic(**dataclasses.asdict(data.synthetic))
        raw.user_features = _pick_features(
            data.user_features, SYNTHETIC_USER_FEATURES, "user_features"
        )
        raw.item_features = _pick_features(
            data.item_features, SYNTHETIC_ITEM_FEATURES, "item_features"
        )
        return raw
    if data.dataset == "csv":
        paths = [_resolve(config.root, getattr(data, key))
                 for key in ("users_csv", "items_csv", "interactions_csv")]
        return read_csv_dataset(*paths, data.user_features, data.item_features,
                                data.missing_feature_rows, name="csv")
    raise ValueError(f"data.dataset = {data.dataset!r}: expected movielens-100k, synthetic or csv")


# --- helpers -----------------------------------------------------------------------------


def _resolve(root: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root) / path


def _check_declaration(declared: dict[str, str], key: str, id_column: str) -> dict[str, str]:
    for column, kind in declared.items():
        if kind not in FEATURE_TYPES:
            raise DataValidationError(
                f"{key}[{column!r}] = {kind!r}: expected one of {', '.join(FEATURE_TYPES)}"
            )
        if column == id_column:
            raise DataValidationError(
                f"{key} declares {id_column!r} as a feature; the id column is always used "
                "and must not be declared"
            )
    return declared


def _pick_features(declared: dict[str, str] | None, available: dict[str, str],
                   key: str) -> dict[str, str]:
    if declared is None:
        return dict(available)
    wrong = {c: t for c, t in declared.items() if available.get(c) != t}
    if wrong:
        raise DataValidationError(
            f"data.{key} = {declared!r}: the synthetic dataset has no such feature(s) "
            f"{wrong!r}; it offers {available!r}. Set data.{key} to null to use all of them, "
            "or to a subset of these"
        )
    return dict(declared)


def _read_csv(path: Path, required: list[str], hint: str) -> pd.DataFrame:
    expected = f"expected a CSV file with a header line naming {', '.join(required)}"
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found; {expected}")
    try:
        with warnings.catch_warnings():
            # Without index_col=False, rows with extra fields silently turn the leading
            # columns into an index; with it pandas only warns and drops data. Refuse instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # Only empty cells are missing: "NA" or "null" may be real category values.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                                encoding="utf-8-sig", index_col=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: empty file; {expected}") from None
    except (pd.errors.ParserWarning, pd.errors.ParserError, UnicodeDecodeError) as err:
        problem = _ragged_line(path) or f"not a readable UTF-8 CSV: {str(err).strip()}"
        raise DataValidationError(f"{path}: {problem}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} (the header has "
            f"{', '.join(map(repr, frame.columns))}); {hint}"
        )
    if frame.empty:
        raise DataValidationError(f"{path}: the header is there but no data rows follow")
    return frame


def _ragged_line(path: Path) -> str | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            width = len(next(rows))
            for row in rows:
                if len(row) > width:
                    return (f"line {rows.line_num} has {len(row)} fields but the header has "
                            f"{width}; quote values that contain commas")
    except (UnicodeDecodeError, csv.Error, StopIteration):
        pass
    return None


def _row_error(path: Path, frame: pd.DataFrame, column: str, bad: np.ndarray, problem: str,
               expected: str) -> DataValidationError:
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    value = frame[column].iloc[first]
    shown = "an empty cell" if pd.isna(value) else repr(value)
    more = f" ({len(rows)} such rows in all)" if len(rows) > 1 else ""
    return DataValidationError(
        f"{path}: column {column!r}, data row {first + 1} (line {first + 2}): {problem} "
        f"{shown}; expected {expected}{more}"
    )


def _check_ids(path: Path, frame: pd.DataFrame, column: str, unique: bool) -> None:
    ids = frame[column]
    empty = (ids.isna() | (ids.str.strip() == "")).to_numpy()
    if empty.any():
        raise _row_error(path, frame, column, empty, "missing id:", "a non-empty id")
    if unique:
        duplicated = ids.duplicated().to_numpy()
        if duplicated.any():
            first = int(np.flatnonzero(duplicated)[0])
            earlier = int(np.flatnonzero((ids == ids.iloc[first]).to_numpy())[0])
            raise _row_error(
                path, frame, column, duplicated, "duplicate id",
                f"each id once per feature table (first seen at data row {earlier + 1}); "
                "merge or remove the repeated rows",
            )


def _to_number(path: Path, frame: pd.DataFrame, column: str, expected: str,
               allow_missing: bool, integer: bool = False) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    array = values.to_numpy(dtype=np.float64)
    bad = raw.notna().to_numpy() & ~np.isfinite(array)
    if not allow_missing:
        bad |= raw.isna().to_numpy()
    if integer:
        bad |= np.isfinite(array) & (array != np.round(array))
    if bad.any():
        raise _row_error(path, frame, column, bad, "cannot use the value", expected)
    return values


def _read_side(path: Path, id_column: str, features: dict[str, str], key: str) -> pd.DataFrame:
    hint = (f"add the column(s), or change {key} in config.json if they are not meant to be "
            "features")
    frame = _read_csv(path, [id_column, *features], hint)
    _check_ids(path, frame, id_column, unique=True)
    for column, kind in features.items():
        if kind == "numeric":
            frame[column] = _to_number(
                path, frame, column, f"a number (column declared numeric in {key}); leave the "
                "cell empty for an unknown value", allow_missing=True,
            )
    return frame[[id_column, *[c for c in frame.columns if c != id_column]]]


def _read_interactions(path: Path) -> tuple[pd.DataFrame, list[str]]:
    frame = _read_csv(path, ["user_id", "item_id", "label"],
                      "interactions need user_id, item_id and label (1 = interacted, 0 = "
                      "explicit negative)")
    _check_ids(path, frame, "user_id", unique=False)
    _check_ids(path, frame, "item_id", unique=False)
    label = _to_number(path, frame, "label", "0 or 1 (1 = interacted, 0 = explicit negative)",
                       allow_missing=False, integer=True)
    outside = ~label.isin([0, 1]).to_numpy()
    if outside.any():
        raise _row_error(path, frame, "label", outside, "label outside {0, 1}:",
                         "0 or 1 (1 = interacted, 0 = explicit negative)")
    out = {"user_id": frame["user_id"], "item_id": frame["item_id"],
           "label": label.astype(np.int8)}
    if "rating" in frame.columns:
        out["rating"] = _to_number(path, frame, "rating", "a number or an empty cell",
                                   allow_missing=True).astype(np.float32)
    if "timestamp" in frame.columns:
        out["timestamp"] = _to_number(
            path, frame, "timestamp", "whole seconds since 1970-01-01 (Unix time)",
            allow_missing=False, integer=True,
        ).astype(np.int64)
    notes = []
    ignored = [c for c in frame.columns if c not in out]
    if ignored:
        notes.append(f"{path.name}: ignored column(s) {', '.join(ignored)} (not in the data "
                     "contract)")
    return pd.DataFrame(out), notes


def _handle_missing_rows(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                         paths: list[Path], policy: str) -> tuple[pd.DataFrame, list[str]]:
    no_user = ~interactions["user_id"].isin(users["user_id"]).to_numpy()
    no_item = ~interactions["item_id"].isin(items["item_id"]).to_numpy()
    notes = []
    for mask, column, table in ((no_user, "user_id", paths[0]), (no_item, "item_id", paths[1])):
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            ids = interactions[column][mask]
            notes.append(
                f"{mask.sum()} interaction(s) have a {column} with no row in {table.name} "
                f"({ids.nunique()} distinct id(s); first {ids.iloc[0]!r} at {paths[2].name} "
                f"data row {first + 1})"
            )
    affected = no_user | no_item
    count = int(affected.sum())
    if not count:
        return interactions, notes
    if policy == "keep":
        notes.append(f"kept {count} interaction(s) without a feature row; their missing "
                     "features are unknown (missing_feature_rows = 'keep')")
        return interactions, notes
    if count == len(interactions):
        raise DataValidationError(
            f"{paths[2]}: none of the {count} interactions has both a user row in "
            f"{paths[0].name} and an item row in {paths[1].name}; check that the id columns "
            f"use the same ids (e.g. '1' vs 'u1'). " + " ".join(notes)
        )
    notes.append(f"dropped {count} of {len(interactions)} interaction(s) without a feature "
                 "row (missing_feature_rows = 'drop')")
    return interactions[~affected].reset_index(drop=True), notes
