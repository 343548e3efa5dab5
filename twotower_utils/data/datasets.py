"""Dataset sources: MovieLens-100K, the user's own CSVs and a synthetic generator.

Every source ends as a `RawDataset` (three DataFrames that follow the data contract in
docs/architecture.md). `load_dataset(config)` picks the source named by `data.dataset`.
The MovieLens fetcher lives in `movielens.py`, the generator in `synthetic.py` and the shared
contract types in `rawdata.py`; this module re-exports them so callers need only this one.
No TensorFlow here: only numpy, pandas and the standard library.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import FEATURE_TYPES, ColumnsConfig
from twotower_utils.data.csvread import describe_rows, read_csv, row_error, to_number
from twotower_utils.data.interactions import apply_label_mode, read_interactions
from twotower_utils.data.movielens import (
    ML100K_ITEM_FEATURES,
    ML100K_SHA256,
    ML100K_USER_FEATURES,
    DataSourceError,
    fetch_movielens_100k,
)
from twotower_utils.data.rawdata import (
    CONFLICT_POLICIES,
    DUPLICATE_POLICIES,
    DataValidationError,
    RawDataset,
    read_manifest,
    resolve_pairs,
    write_dataset,
)
from twotower_utils.data.synthetic import (
    SYNTHETIC_ITEM_FEATURES,
    SYNTHETIC_USER_FEATURES,
    generate_synthetic,
)
from twotower_utils.logs import report

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
    users_csv: str | Path | None,
    items_csv: str | Path | None,
    interactions_csv: str | Path,
    user_features: dict[str, str] | None,
    item_features: dict[str, str] | None,
    missing_feature_rows: str = "drop",
    name: str = "csv",
    duplicates: str = "keep_latest",
    conflicting_labels: str = "positive_wins",
    *,
    columns: Any = None,
    label: str = "column",
    missing_values: Sequence[str] = (),
) -> RawDataset:
    """Read and validate the CSVs of the data contract into a `RawDataset`.

    Takes the paths of `users.csv` (id + features; None: users are the ids of the
    interactions, without features), `items.csv` (likewise), `interactions.csv` (user id, item
    id, optional label, timestamp, rating), the declared features per side (`{column:
    "categorical"|"numeric"|"multi_hot"}`, None = ids only), what to do with interactions
    whose user or item has no feature row ("drop" or "keep"), the dataset's name, the policies
    for repeated (user, item) pairs and for pairs labelled both 1 and 0 (see `resolve_pairs`),
    and keyword-only: `columns`, the column names of each file (`data.columns`: a
    `ColumnsConfig` or the same as a dict; None = the contract's names), `label` (`data.label`:
    "column", "all_positive" or "rating >= t", see `derive_labels`) and `missing_values`
    (feature cells that mean "unknown", read as empty). Ids are read as strings ("007" stays
    "007"), normalised once (`normalise_ids`); declared numeric columns become numbers, other
    feature columns stay strings (missing = NaN). The frames use the contract's column names;
    interactions keep their file order and only the contract columns. Every column not used is
    named, and everything dropped or changed is logged (`twotower_utils.data`) and kept in
    `notes`. Returns the RawDataset; raises `DataValidationError` naming the file, column,
    first offending row and the fix.
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
    names = _column_names(columns)
    user_features = _check_declaration(dict(user_features or {}), "user_features",
                                       names["users"]["user_id"])
    item_features = _check_declaration(dict(item_features or {}), "item_features",
                                       names["items"]["item_id"])
    paths = [None if p is None else Path(p) for p in (users_csv, items_csv, interactions_csv)]
    notes: list[str] = []
    unused: dict[str, list[str]] = {}
    sides = {}
    for side, path, features in (("user", paths[0], user_features),
                                 ("item", paths[1], item_features)):
        if path is None:
            if features:
                raise DataValidationError(
                    f"data.{side}_features = {features!r}: no data.{side}s_csv to read them "
                    f"from; set data.{side}s_csv or data.{side}_features to null")
            continue
        sides[side] = _read_side(path, names[f"{side}s"][f"{side}_id"], features,
                                 f"data.{side}_features", notes, missing_values)
        unused[f"{side}s"] = _note_unused(path.name, sides[side],
                                          [names[f"{side}s"][f"{side}_id"], *features],
                                          f"not declared in data.{side}_features", notes)
    interactions, labels, ignored = read_interactions(paths[2], names["interactions"], label,
                                                      notes)
    unused["interactions"] = ignored
    for side, path in (("user", paths[0]), ("item", paths[1])):
        column = f"{side}_id"
        tables = [(paths[2], interactions, names["interactions"][column])]
        if path is not None:
            tables.insert(0, (path, sides[side], names[f"{side}s"][column]))
        normalise_ids(column, tables, notes)
        if path is not None:
            _check_unique(path, sides[side], names[f"{side}s"][column])
            sides[side] = sides[side].rename(columns={names[f"{side}s"][column]: column})
    interactions = interactions.rename(columns={names["interactions"][c]: c
                                                for c in ("user_id", "item_id")})
    for side, path in (("user", paths[0]), ("item", paths[1])):
        if path is None:
            ids = pd.unique(interactions[f"{side}_id"])
            sides[side] = pd.DataFrame({f"{side}_id": pd.Series(
                ids, dtype=interactions[f"{side}_id"].dtype)})
            report(notes, f"no data.{side}s_csv: {len(ids):,} {side}s taken from "
                          f"{paths[2].name}, without features", logging.INFO)
    interactions, hygiene = resolve_pairs(
        interactions, duplicates, conflicting_labels, notes, source=paths[2].name,
        where=lambda rows: describe_rows(paths[2], rows),
    )
    # The index still holds each row's data-row number in the file, for the messages.
    interactions = _handle_missing_rows(interactions, sides["user"], sides["item"], paths,
                                        missing_feature_rows, notes).reset_index(drop=True)
    return RawDataset(name, sides["user"], sides["item"], interactions, user_features,
                      item_features, notes, hygiene, labels, unused)


def load_dataset(config: Any) -> RawDataset:
    """Load the dataset `config.data.dataset` names, as a `RawDataset`.

    Takes a `Config` (see config.py). "movielens-100k": fetched (or found cached) under
    `config.path("raw_dir")`, then read with `data.user_features`/`data.item_features`, or
    the MovieLens defaults when null. "synthetic": generated from `data.synthetic`; declared
    features must be columns the generator makes (null = all of them). "csv": `data.users_csv`
    etc., relative to the config's directory (users/items may be null: ids only), read through
    `data.columns`, features as declared (null = ids only). `data.label` applies to every
    source (the generator's rows all carry a rating); `data.missing_values`,
    `data.missing_feature_rows`, `data.duplicates` and `data.conflicting_labels` to the
    CSV-based ones (see `resolve_pairs`; the generator's pairs are distinct already). What
    loading drops or changes, and every column it does not use, is logged (with the
    fetcher's progress, on `twotower_utils.data`) and kept in `notes`.
    """
    data = config.data
    options = {"duplicates": data.duplicates, "conflicting_labels": data.conflicting_labels,
               "label": data.label, "missing_values": data.missing_values}
    if data.dataset == "movielens-100k":
        local_dir = _resolve(config.root, data.ml100k_dir) if data.ml100k_dir else None
        directory = fetch_movielens_100k(config.path("raw_dir"), local_dir)
        raw = read_csv_dataset(
            directory / "users.csv", directory / "items.csv", directory / "interactions.csv",
            ML100K_USER_FEATURES if data.user_features is None else data.user_features,
            ML100K_ITEM_FEATURES if data.item_features is None else data.item_features,
            data.missing_feature_rows, name="movielens-100k", **options,
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
        raw.labels = apply_label_mode(raw.interactions, data.label, "synthetic", raw.notes)
        for side in ("user", "item"):
            raw.unused_columns[f"{side}s"] = _note_unused(
                f"synthetic {side}s", getattr(raw, f"{side}s"),
                [f"{side}_id", *getattr(raw, f"{side}_features")],
                f"not declared in data.{side}_features", raw.notes)
        # No resolve_pairs here: the generator draws distinct (user, item) pairs with label 1
        # by construction (tested), and hashing 10M string ids to re-check that cost 8 s.
        return raw
    if data.dataset == "csv":
        paths = [None if getattr(data, key) is None else _resolve(config.root, getattr(data, key))
                 for key in ("users_csv", "items_csv", "interactions_csv")]
        return read_csv_dataset(*paths, data.user_features, data.item_features,
                                data.missing_feature_rows, name="csv", columns=data.columns,
                                **options)
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


# Cells that spreadsheets and pandas write for a missing value; never a real id.
_MISSING_ID_MARKERS = frozenset({"nan", "none", "null", "<na>"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_WHOLE_FLOAT = re.compile(r"([+-]?\d+)\.0*")


def normalise_ids(column: str, tables: list[tuple],
                  notes: list[str] | None = None) -> None:
    """Check and normalise one id column across the files that hold it, in place.

    Takes the column name and `(path, frame)` pairs (e.g. users.csv and interactions.csv for
    `user_id`), or `(path, frame, name)` triples where a file names the column otherwise
    (`data.columns`: messages then name the file's own column). Empty cells and missing-value
    markers (NaN, None, null, <NA>, any case) are refused naming the file, column and first
    row. Surrounding spaces are stripped. When every
    id of the column in every file is a number, whole-number floats lose their zero fraction
    ("1.0" -> "1", "007.0" -> "007"), so a file saved through a float column still matches
    the others; a column with any non-numeric id is left as written ("1.0" may be a code).
    Each change is counted, logged and noted. Work is done on the distinct ids only.
    """
    factorized = []
    label = column
    for path, frame, *own in tables:
        column = own[0] if own else label
        codes, uniques = pd.factorize(frame[column])
        uniques = pd.Series(np.asarray(uniques, dtype=object), dtype=object)
        stripped = uniques.str.strip()
        missing = codes < 0  # empty cells
        if len(uniques):
            marker = (stripped.str.lower().isin(_MISSING_ID_MARKERS) | (stripped == "")).to_numpy()
            missing |= marker[np.maximum(codes, 0)]
        if missing.any():
            raise row_error(path, frame, column, missing, "missing id:",
                             "a non-empty id (fill it in or remove the row)")
        changed = (stripped != uniques).to_numpy()
        if changed.any():
            rows = int(changed[codes].sum())
            first = int(np.flatnonzero(changed[codes])[0])
            report(notes, f"{path.name}: stripped surrounding spaces from {rows:,} {column} "
                          f"value(s) (first {frame[column].iloc[first]!r} at "
                          f"{describe_rows(path, [first])})", logging.INFO)
        factorized.append((path, frame, column, codes, stripped, changed.any()))
    numeric = all(stripped.str.fullmatch(_NUMBER).all() for *_, stripped, _ in factorized)
    for path, frame, column, codes, stripped, changed in factorized:
        whole = stripped.str.fullmatch(_WHOLE_FLOAT).to_numpy() if numeric else None
        if not changed and (whole is None or not whole.any()):
            continue  # the common case: nothing to rewrite, keep the column as read
        if whole is not None and whole.any():
            rows = int(whole[codes].sum())
            first = int(np.flatnonzero(whole[codes])[0])
            report(notes, f"{path.name}: read {rows:,} {column} value(s) written as whole-"
                          f"number floats as integers (first {stripped[codes[first]]!r} -> "
                          f"{_WHOLE_FLOAT.fullmatch(stripped[codes[first]]).group(1)!r} "
                          f"at {describe_rows(path, [first])}), since every {column} is "
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
        raise row_error(
            path, frame, column, duplicated, "duplicate id",
            f"each id once per feature table (first seen at data row {earlier + 1}; ids are "
            "compared after stripping spaces and reading '1.0' as '1'); merge or remove the "
            "repeated rows",
        )


def _column_names(columns: Any) -> dict[str, dict[str, str | None]]:
    """`data.columns` (a `ColumnsConfig`, a dict of the same shape, or None) as plain dicts,
    with the contract's names wherever none is given."""
    if dataclasses.is_dataclass(columns):
        columns = dataclasses.asdict(columns)
    given = columns or {}
    defaults = dataclasses.asdict(ColumnsConfig())
    return {part: {**names, **(given.get(part) or {})} for part, names in defaults.items()}


def _read_side(path: Path, id_column: str, features: dict[str, str], key: str,
               notes: list[str], missing_values: Sequence[str]) -> pd.DataFrame:
    hint = (f"add the column(s), or change {key} in config.json if they are not meant to be "
            f"features; name the id column in data.columns (now {id_column!r})")
    frame = read_csv(path, [id_column, *features], hint, notes)
    markers = {str(value).strip() for value in missing_values}
    for column in features:
        if markers:
            # Placeholders such as "(no genres listed)" mean "unknown", not a category.
            hit = frame[column].str.strip().isin(markers).to_numpy()
            if hit.any():
                frame.loc[hit, column] = np.nan
                report(notes, f"{path.name}: read {int(hit.sum()):,} {column!r} cell(s) such as "
                              f"{sorted(markers)[0]!r} as missing (data.missing_values)",
                       logging.INFO)
        if features[column] == "numeric":
            frame[column] = to_number(
                path, frame, column, f"a number (column declared numeric in {key}); leave the "
                "cell empty for an unknown value", allow_missing=True,
            )
    return frame[[id_column, *[c for c in frame.columns if c != id_column]]]


def _note_unused(source: str, table: pd.DataFrame, used: list[str], why: str,
                 notes: list[str]) -> list[str]:
    """Name the columns of a feature table that are not used, and return them."""
    unused = [column for column in table.columns if column not in used]
    if unused:
        report(notes, f"{source}: column(s) not used: {', '.join(unused)} ({why}; kept for "
                      "display only)", logging.INFO)
    return unused


def _handle_missing_rows(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                         paths: list[Path], policy: str, notes: list[str]) -> pd.DataFrame:
    no_user = ~interactions["user_id"].isin(users["user_id"]).to_numpy()
    no_item = ~interactions["item_id"].isin(items["item_id"]).to_numpy()
    found = []
    tables = [path.name if path is not None else f"{paths[2].name} (no {side}s file)"
              for path, side in zip(paths[:2], ("user", "item"), strict=True)]
    for mask, column, table in ((no_user, "user_id", tables[0]), (no_item, "item_id", tables[1])):
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            ids = interactions[column][mask]
            found.append(
                f"{mask.sum()} interaction(s) have a {column} with no row in {table} "
                f"({ids.nunique()} distinct id(s); first {ids.iloc[0]!r} at {paths[2].name} "
                f"data row {interactions.index[first] + 1})"
            )
    affected = no_user | no_item
    count = int(affected.sum())
    if count and count == len(interactions) and policy == "drop":
        raise DataValidationError(
            f"{paths[2]}: none of the {count} interactions has both a user row in "
            f"{tables[0]} and an item row in {tables[1]}; check that the id columns "
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
