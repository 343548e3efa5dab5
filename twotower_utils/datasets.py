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
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import FEATURE_TYPES
from twotower_utils.logs import report
from twotower_utils.movielens import (
    ML100K_ITEM_FEATURES,
    ML100K_SHA256,
    ML100K_USER_FEATURES,
    DataSourceError,
    fetch_movielens_100k,
)
from twotower_utils.rawdata import (
    CONFLICT_POLICIES,
    DUPLICATE_POLICIES,
    DataValidationError,
    RawDataset,
    read_manifest,
    resolve_pairs,
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
    "resolve_pairs",
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
    duplicates: str = "keep_latest",
    conflicting_labels: str = "positive_wins",
) -> RawDataset:
    """Read and validate the three CSVs of the data contract into a `RawDataset`.

    Takes the paths of `users.csv` (`user_id` + features), `items.csv` (`item_id` + features)
    and `interactions.csv` (`user_id`, `item_id`, `label`, optional `timestamp`, `rating`), the
    declared features per side (`{column: "categorical"|"numeric"|"multi_hot"}`, None = ids
    only), what to do with interactions whose user or item has no feature row ("drop" or
    "keep"), the dataset's name, and the policies for repeated (user, item) pairs and for
    pairs labelled both 1 and 0 (see `resolve_pairs`). Ids are read as strings ("007" stays
    "007"), normalised once (`normalise_ids`: surrounding spaces stripped; "1.0" read as "1"
    when every id of that column, in both files, is a number); declared numeric columns become
    numbers, other feature columns stay strings (missing = NaN). Interactions keep their file
    order and only the contract columns. Everything dropped or changed is logged
    (`twotower_utils.data`) and kept in `notes`. Returns the RawDataset; raises
    `DataValidationError` naming the file, column, first offending row and the fix.
    """
    if missing_feature_rows not in MISSING_FEATURE_ROWS:
        raise ValueError(
            f"missing_feature_rows = {missing_feature_rows!r}: expected 'drop' or 'keep'"
        )
    for key, value, allowed in (("duplicates", duplicates, DUPLICATE_POLICIES),
                                ("conflicting_labels", conflicting_labels, CONFLICT_POLICIES)):
        if value not in allowed:
            raise ValueError(f"data.{key} = {value!r}: expected one of "
                             f"{', '.join(map(repr, allowed))}")
    user_features = _check_declaration(dict(user_features or {}), "user_features", "user_id")
    item_features = _check_declaration(dict(item_features or {}), "item_features", "item_id")
    paths = [Path(p) for p in (users_csv, items_csv, interactions_csv)]
    notes: list[str] = []
    users = _read_side(paths[0], "user_id", user_features, "data.user_features")
    items = _read_side(paths[1], "item_id", item_features, "data.item_features")
    interactions = _read_interactions(paths[2], notes)
    for column, table, path in (("user_id", users, paths[0]), ("item_id", items, paths[1])):
        normalise_ids(column, [(path, table), (paths[2], interactions)], notes)
        _check_unique(path, table, column)
    interactions, hygiene = resolve_pairs(
        interactions, duplicates, conflicting_labels, notes, source=paths[2].name,
        where=lambda rows: _describe_rows(paths[2], rows),
    )
    # The index still holds each row's data-row number in the file, for the messages.
    interactions = _handle_missing_rows(interactions, users, items, paths, missing_feature_rows,
                                        notes).reset_index(drop=True)
    return RawDataset(name, users, items, interactions, user_features, item_features, notes,
                      hygiene)


def load_dataset(config: Any, *, log: Callable[[str], object] = print) -> RawDataset:
    """Load the dataset `config.data.dataset` names, as a `RawDataset`.

    Takes a `Config` (see config.py). "movielens-100k": fetched (or found cached) under
    `config.path("raw_dir")`, then read with `data.user_features`/`data.item_features`, or
    the MovieLens defaults when null. "synthetic": generated from `data.synthetic`; declared
    features must be columns the generator makes (null = all of them). "csv": `data.users_csv`
    etc., relative to the config's directory, features as declared (null = ids only).
    `data.missing_feature_rows`, `data.duplicates` and `data.conflicting_labels` apply to the
    CSV-based sources (see `resolve_pairs`; the generator's pairs are distinct already); `log`
    gets the fetcher's progress lines. What loading drops or changes is logged and kept in `notes`.
    """
    data = config.data
    policies = {"duplicates": data.duplicates, "conflicting_labels": data.conflicting_labels}
    if data.dataset == "movielens-100k":
        local_dir = _resolve(config.root, data.ml100k_dir) if data.ml100k_dir else None
        directory = fetch_movielens_100k(config.path("raw_dir"), local_dir, log=log)
        raw = read_csv_dataset(
            directory / "users.csv", directory / "items.csv", directory / "interactions.csv",
            ML100K_USER_FEATURES if data.user_features is None else data.user_features,
            ML100K_ITEM_FEATURES if data.item_features is None else data.item_features,
            data.missing_feature_rows, name="movielens-100k", **policies,
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
        # No resolve_pairs here: the generator draws distinct (user, item) pairs with label 1
        # by construction (tested), and hashing 10M string ids to re-check that cost 8 s.
        return raw
    if data.dataset == "csv":
        paths = [_resolve(config.root, getattr(data, key))
                 for key in ("users_csv", "items_csv", "interactions_csv")]
        return read_csv_dataset(*paths, data.user_features, data.item_features,
                                data.missing_feature_rows, name="csv", **policies)
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


_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe (|)"}
# Cells that spreadsheets and pandas write for a missing value; never a real id.
_MISSING_ID_MARKERS = frozenset({"nan", "none", "null", "<na>"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_WHOLE_FLOAT = re.compile(r"([+-]?\d+)\.0*")


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
    except UnicodeDecodeError:
        raise DataValidationError(f"{path}: {_encoding_problem(path)}") from None
    except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
        problem = (_delimiter_problem(path, required) or _ragged_line(path)
                   or f"not a readable CSV: {str(err).strip()}")
        raise DataValidationError(f"{path}: {problem}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        delimiter = _delimiter_problem(path, required)
        if delimiter:
            raise DataValidationError(f"{path}: {delimiter}")
        raise DataValidationError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} (the header has "
            f"{', '.join(map(repr, frame.columns))}); {hint}"
        )
    if frame.empty:
        raise DataValidationError(f"{path}: the header is there but no data rows follow")
    return frame


def _encoding_problem(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits, and how to fix it (error path only)."""
    with open(path, "rb") as handle:
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return ("the file is UTF-16 (Excel's 'Unicode Text'): save it as UTF-8 with commas "
                    "(Excel: Save As > 'CSV UTF-8'; pandas: pd.read_csv(path, "
                    "encoding='utf-16', sep=None, engine='python').to_csv(path, index=False))")
        handle.seek(0)
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = line[err.start:err.start + 1]
                shown = line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
                return (f"line {number} is not valid UTF-8 (byte 0x{bad.hex()} at character "
                        f"{err.start + 1}: {shown[:80]!r}); the file is probably Latin-1 or "
                        "Windows-1252: save it as UTF-8 (Excel: Save As > 'CSV UTF-8'; pandas: "
                        "pd.read_csv(path, encoding='latin-1').to_csv(path, index=False))")
    return "not valid UTF-8: save it as UTF-8"


def _delimiter_problem(path: Path, required: list[str]) -> str | None:
    """If the header is split by ';', tab or '|' rather than ',', say so and how to fix it."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return None
    found = []
    for delimiter, label in _DELIMITERS.items():
        fields = [field.strip() for field in header.split(delimiter)]
        if len(fields) > 1:
            found.append((all(c in fields for c in required), header.count(delimiter), label,
                          delimiter))
    if not found:
        return None
    matches, _, label, delimiter = max(found)
    how = ("its header names the expected columns when split on it" if matches
           else "its header line contains it")
    return (f"the file looks {label}-delimited ({delimiter!r}; {how}: {header[:80]!r}); this "
            "project reads comma-separated files: save it with commas (Excel: Save As > 'CSV "
            f"UTF-8'; pandas: pd.read_csv(path, sep={delimiter!r}).to_csv(path, index=False))")


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


def _line_numbers(path: Path, rows: list[int]) -> dict[int, int]:
    """1-based line (as an editor shows it) where each 0-based data row starts.

    pandas skips blank lines and lets a quoted cell span lines, so a data row is not always
    line row + 2; the file is read only up to the last row asked for (messages only).
    """
    wanted, found = set(rows), {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            data_row, previous_end = -1, 0  # -1: the header comes first
            for record in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not record:
                    continue  # blank line, skipped by pandas as well
                if data_row in wanted:
                    found[data_row] = start
                    if len(found) == len(wanted):
                        break
                data_row += 1
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return {row: found.get(row, row + 2) for row in rows}


def _describe_rows(path: Path, rows: list[int]) -> str:
    lines = _line_numbers(path, rows)
    data = " and ".join(str(row + 1) for row in rows)
    return (f"data row{'s' if len(rows) > 1 else ''} {data} "
            f"(line{'s' if len(rows) > 1 else ''} {' and '.join(str(lines[r]) for r in rows)})")


def _row_error(path: Path, frame: pd.DataFrame, column: str, bad: np.ndarray, problem: str,
               expected: str) -> DataValidationError:
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    value = frame[column].iloc[first]
    shown = "an empty cell" if pd.isna(value) else repr(value)
    more = f" ({len(rows)} such rows in all)" if len(rows) > 1 else ""
    return DataValidationError(
        f"{path}: column {column!r}, {_describe_rows(path, [first])}: {problem} "
        f"{shown}; expected {expected}{more}"
    )


def normalise_ids(column: str, tables: list[tuple[Path, pd.DataFrame]],
                  notes: list[str] | None = None) -> None:
    """Check and normalise one id column across the files that hold it, in place.

    Takes the column name and `(path, frame)` pairs (e.g. users.csv and interactions.csv for
    `user_id`). Empty cells and missing-value markers (NaN, None, null, <NA>, any case) are
    refused naming the file, column and first row. Surrounding spaces are stripped. When every
    id of the column in every file is a number, whole-number floats lose their zero fraction
    ("1.0" -> "1", "007.0" -> "007"), so a file saved through a float column still matches
    the others; a column with any non-numeric id is left as written ("1.0" may be a code).
    Each change is counted, logged and noted. Work is done on the distinct ids only.
    """
    factorized = []
    for path, frame in tables:
        codes, uniques = pd.factorize(frame[column])
        uniques = pd.Series(np.asarray(uniques, dtype=object), dtype=object)
        stripped = uniques.str.strip()
        missing = codes < 0  # empty cells
        if len(uniques):
            marker = (stripped.str.lower().isin(_MISSING_ID_MARKERS) | (stripped == "")).to_numpy()
            missing |= marker[np.maximum(codes, 0)]
        if missing.any():
            raise _row_error(path, frame, column, missing, "missing id:",
                             "a non-empty id (fill it in or remove the row)")
        changed = (stripped != uniques).to_numpy()
        if changed.any():
            rows = int(changed[codes].sum())
            first = int(np.flatnonzero(changed[codes])[0])
            report(notes, f"{path.name}: stripped surrounding spaces from {rows:,} {column} "
                          f"value(s) (first {frame[column].iloc[first]!r} at "
                          f"{_describe_rows(path, [first])})", logging.INFO)
        factorized.append((path, frame, codes, stripped, changed.any()))
    numeric = all(stripped.str.fullmatch(_NUMBER).all() for _, _, _, stripped, _ in factorized)
    for path, frame, codes, stripped, changed in factorized:
        whole = stripped.str.fullmatch(_WHOLE_FLOAT).to_numpy() if numeric else None
        if not changed and (whole is None or not whole.any()):
            continue  # the common case: nothing to rewrite, keep the column as read
        if whole is not None and whole.any():
            rows = int(whole[codes].sum())
            first = int(np.flatnonzero(whole[codes])[0])
            report(notes, f"{path.name}: read {rows:,} {column} value(s) written as whole-"
                          f"number floats as integers (first {stripped[codes[first]]!r} -> "
                          f"{_WHOLE_FLOAT.fullmatch(stripped[codes[first]]).group(1)!r} "
                          f"at {_describe_rows(path, [first])}), since every {column} is "
                          "a number", logging.INFO)
            stripped = stripped.copy()
            stripped[whole] = stripped[whole].str.replace(r"\.0*$", "", regex=True)
        values = stripped.to_numpy(dtype=object)[codes]
        frame[column] = pd.Series(values, index=frame.index, dtype=frame[column].dtype)


def _check_unique(path: Path, frame: pd.DataFrame, column: str) -> None:
    ids = frame[column]
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        earlier = int(np.flatnonzero((ids == ids.iloc[first]).to_numpy())[0])
        raise _row_error(
            path, frame, column, duplicated, "duplicate id",
            f"each id once per feature table (first seen at data row {earlier + 1}; ids are "
            "compared after stripping spaces and reading '1.0' as '1'); merge or remove the "
            "repeated rows",
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
    for column, kind in features.items():
        if kind == "numeric":
            frame[column] = _to_number(
                path, frame, column, f"a number (column declared numeric in {key}); leave the "
                "cell empty for an unknown value", allow_missing=True,
            )
    return frame[[id_column, *[c for c in frame.columns if c != id_column]]]


def _read_interactions(path: Path, notes: list[str]) -> pd.DataFrame:
    frame = _read_csv(path, ["user_id", "item_id", "label"],
                      "interactions need user_id, item_id and label (1 = interacted, 0 = "
                      "explicit negative)")
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
    ignored = [c for c in frame.columns if c not in out]
    if ignored:
        report(notes, f"{path.name}: ignored column(s) {', '.join(ignored)} (not in the data "
                      "contract)", logging.INFO)
    return pd.DataFrame(out)


def _handle_missing_rows(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                         paths: list[Path], policy: str, notes: list[str]) -> pd.DataFrame:
    no_user = ~interactions["user_id"].isin(users["user_id"]).to_numpy()
    no_item = ~interactions["item_id"].isin(items["item_id"]).to_numpy()
    found = []
    for mask, column, table in ((no_user, "user_id", paths[0]), (no_item, "item_id", paths[1])):
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            ids = interactions[column][mask]
            found.append(
                f"{mask.sum()} interaction(s) have a {column} with no row in {table.name} "
                f"({ids.nunique()} distinct id(s); first {ids.iloc[0]!r} at {paths[2].name} "
                f"data row {interactions.index[first] + 1})"
            )
    affected = no_user | no_item
    count = int(affected.sum())
    if count and count == len(interactions) and policy == "drop":
        raise DataValidationError(
            f"{paths[2]}: none of the {count} interactions has both a user row in "
            f"{paths[0].name} and an item row in {paths[1].name}; check that the id columns "
            f"use the same ids (e.g. '1' vs 'u1'). " + " ".join(found)
        )
    for line in found:
        report(notes, line)
    if not count:
        return interactions
    if policy == "keep":
        report(notes, f"kept {count} interaction(s) without a feature row; their missing "
                      "features are unknown (missing_feature_rows = 'keep')")
        return interactions
    report(notes, f"dropped {count} of {len(interactions)} interaction(s) without a feature "
                  "row (missing_feature_rows = 'drop')")
    return interactions[~affected]
