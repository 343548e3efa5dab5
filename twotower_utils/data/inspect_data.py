"""`inspect`: look at raw CSV files, say what the data stage would make of them, suggest a config.

    python -m twotower_utils.data inspect --items movies.csv --interactions ratings.csv \
        --write-config my.json

Per file: the columns with an inferred type (id-like, categorical, numeric, multi-hot with its
separator, free text, timestamp), distinct values, missing shares and the problems the data
stage would refuse. From that, a suggested `data` section (paths relative to the config file,
the column mapping, the label mode, features, placeholder values read as missing), checked by
a dry run of the data stage's loading. Inference is only a suggestion: it is printed for the
user to confirm and applied only when the user runs with the written config. No TensorFlow.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import Config, ConfigError, config_from_dict, parse_label
from twotower_utils.data.csvread import delimiter_problem, read_csv
from twotower_utils.data.rawdata import DataValidationError

__all__ = ["ColumnInfo", "FileInfo", "infer_column", "inspect_file", "run_inspect",
           "suggest_data_section"]

_ID_NAME = re.compile(r"(?i)(^id$|[_ ]id$|(?<=[a-z])Id$|ID$)")
_TIME_NAME = re.compile(r"(?i)(time|date|^ts$|_ts$|_at$|epoch|created|when)")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_RATING_NAME = re.compile(r"(?i)(rating|score|stars?|rate|grade)")
_USER_NAME = re.compile(r"(?i)(user|customer|visitor|member|client|account|person|uid)")
# Cells that stand for "none" in a feature column: "(no genres listed)", "unknown", "n/a".
_PLACEHOLDER = re.compile(r"(?i)^\s*(\(.*\)|unknown|n/?a|none|-|\?)\s*$")
_SEPARATORS = ("|", ";", ",")


@dataclass
class ColumnInfo:
    """One column: `kind` (id-like, categorical, numeric, multi-hot, free text, timestamp,
    empty), `detail` in words, `separator` (multi-hot), distinct values, missing share,
    example values and placeholder cells ("(no genres listed)") found in it."""

    name: str
    kind: str
    detail: str = ""
    separator: str | None = None
    distinct: int = 0
    missing: float = 0.0
    examples: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)


@dataclass
class FileInfo:
    """One file: its role (users, items, interactions), rows, columns, the problems the data
    stage would refuse, and notes from reading it (e.g. trailing empty columns dropped)."""

    role: str
    path: Path
    rows: int = 0
    columns: list[ColumnInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = field(default=None, repr=False)

    def column(self, name: str | None) -> ColumnInfo | None:
        """The column called `name`, or None."""
        return next((c for c in self.columns if c.name == name), None)


def infer_column(name: str, values: pd.Series) -> ColumnInfo:
    """Infer the kind of one column from its name and values (strings, NaN = missing).

    Returns a `ColumnInfo`; a suggestion only, with the reason in `detail`.
    """
    present = values.dropna().astype(str).str.strip()
    present = present[present != ""]
    info = ColumnInfo(name, "empty", missing=1.0 - len(present) / max(len(values), 1))
    if present.empty:
        info.detail = "no values"
        return info
    distinct = present.unique()
    info.distinct, info.examples = len(distinct), [str(v) for v in distinct[:3]]
    unique_share = len(distinct) / len(present)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        array = numbers.to_numpy(np.float64)
        whole = bool(np.all(array == np.round(array)))
        lo, hi = float(array.min()), float(array.max())
        if whole and _TIME_NAME.search(name) and lo >= 1e8 and hi < 1e10:
            info.kind, info.detail = "timestamp", "Unix seconds"
        elif whole and _TIME_NAME.search(name) and lo >= 1e11 and hi < 1e13:
            info.kind, info.detail = "timestamp", "Unix milliseconds"
        elif _ID_NAME.search(name):
            info.kind, info.detail = "id-like", f"{len(distinct):,} distinct"
        else:
            steps = "whole numbers" if whole else _step(array)
            info.kind, info.detail = "numeric", f"{lo:g} to {hi:g}, {steps}"
            if set(np.unique(array)) <= {0.0, 1.0}:
                info.detail = "0/1"
        return info
    if _ID_NAME.search(name):
        info.kind, info.detail = "id-like", f"{len(distinct):,} distinct"
        return info
    if _TIME_NAME.search(name) or present.str.match(_ISO_DATE).mean() > 0.95:
        parsed = pd.to_datetime(present, errors="coerce", format="mixed")
        if parsed.notna().mean() > 0.95:
            info.kind, info.detail = "timestamp", "dates as text"
            return info
    spaces = present.str.contains(" ").mean()
    if unique_share > 0.5 and spaces > 0.5 and len(distinct) > 20:
        info.kind, info.detail = "free text", "not a feature"
        return info
    for separator in _SEPARATORS:
        tokens = present.str.split(separator, regex=False).explode().str.strip()
        has = present.str.contains(separator, regex=False)
        vocabulary = set(tokens[tokens != ""])
        if has.sum() >= 2 and has.mean() >= 0.05 and len(vocabulary) <= max(50, 0.05 * len(
                present)) and (unique_share <= 0.5 or len(vocabulary) < len(distinct)):
            info.kind, info.separator = "multi-hot", separator
            info.detail = f"{len(vocabulary):,} values, separator {separator!r}"
            info.placeholders = sorted(v for v in vocabulary if _PLACEHOLDER.match(v))
            return info
    if unique_share > 0.9 and len(distinct) > 20:
        info.kind, info.detail = "id-like", "nearly all differ; not a feature"
        return info
    info.kind, info.detail = "categorical", f"{len(distinct):,} values"
    info.placeholders = sorted(v for v in distinct if _PLACEHOLDER.match(str(v)))
    return info


def _step(array: np.ndarray) -> str:
    halves = array * 2
    return "in steps of 0.5" if np.all(halves == np.round(halves)) else "decimals"


def inspect_file(path: str | Path, role: str) -> FileInfo:
    """Read one file as the data stage does and infer its columns; returns a `FileInfo`.

    A file the data stage cannot read at all (not UTF-8, not comma-separated, ragged) gets
    that refusal as its one problem.
    """
    info = FileInfo(role, Path(path))
    try:
        frame = read_csv(info.path, [], "", info.notes)
    except DataValidationError as error:
        info.problems.append(str(error))
        return info
    if len(frame.columns) == 1 and delimiter_problem(info.path, []):
        # One column named "user;item": the data stage would refuse the file.
        info.problems.append(f"{info.path}: {delimiter_problem(info.path, [])}")
        return info
    info.rows, info.frame = len(frame), frame
    info.columns = [infer_column(name, frame[name]) for name in frame.columns]
    return info


def _pick(columns: list[ColumnInfo], *tests) -> ColumnInfo | None:
    for test in tests:
        found = [c for c in columns if test(c)]
        if found:
            return found[0]
    return None


def _id_column(info: FileInfo, preferred: str | None, pattern: re.Pattern | None,
               exclude: tuple[str, ...] = ()) -> ColumnInfo | None:
    candidates = [c for c in info.columns if c.name not in exclude]
    return _pick(candidates, lambda c: c.name == preferred,
                 lambda c: c.kind == "id-like" and bool(pattern and pattern.search(c.name)),
                 lambda c: c.kind == "id-like", lambda c: True)


def _check_ids(info: FileInfo, column: str, unique: bool) -> None:
    values = info.frame[column]
    missing = int(values.isna().sum())
    if missing:
        first = int(np.flatnonzero(values.isna().to_numpy())[0])
        info.problems.append(f"{info.path.name}: {missing:,} row(s) without a {column!r} "
                             f"(first: data row {first + 1}); fill them in or remove them")
    if unique and values.dropna().str.strip().duplicated().any():
        count = int(values.dropna().str.strip().duplicated().sum())
        info.problems.append(f"{info.path.name}: {count:,} repeated {column!r} value(s); a "
                             "feature table holds each id once: merge or remove the repeats")


def suggest_data_section(files: dict[str, FileInfo], config_dir: Path,
                         label: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The suggested `data` keys for these files, and a line of reasoning per choice.

    Takes the inspected files by role ("users", "items", "interactions"; the first two may be
    absent), the directory the config will live in (paths are written relative to it) and an
    optional `data.label` that overrides the inferred one. Problems found on the way (ids
    missing, dates as text, ...) are appended to the files' `problems`.
    """
    why: list[str] = []
    data: dict[str, Any] = {"dataset": "csv", "users_csv": None, "items_csv": None,
                            "columns": copy.deepcopy(Config().to_dict()["data"]["columns"]),
                            "user_features": {}, "item_features": {}, "missing_values": []}
    ids: dict[str, str] = {}
    for role, contract in (("users", "user_id"), ("items", "item_id")):
        info = files.get(role)
        if info is None or not info.columns:
            continue
        data[f"{role}_csv"] = os.path.relpath(info.path.resolve(), config_dir.resolve())
        pattern = _USER_NAME if role == "users" else None
        column = _id_column(info, contract, pattern)
        ids[role] = column.name
        data["columns"][role][contract] = column.name
        _check_ids(info, column.name, unique=True)
        features = {}
        for c in info.columns:
            if c is column:
                continue
            if c.kind == "multi-hot" and c.separator != "|":
                info.problems.append(
                    f"{info.path.name}: column {c.name!r} looks like a list separated by "
                    f"{c.separator!r}; the data stage reads '|'-separated lists, so it is left "
                    f"out (write it with '|' to use it as a multi_hot feature)")
            elif c.kind in ("categorical", "numeric", "multi-hot"):
                features[c.name] = c.kind.replace("-", "_")
                data["missing_values"].extend(c.placeholders)
        data[f"{role[:-1]}_features"] = features
        why.append(f"{role}: id column {column.name!r}; features "
                   + (", ".join(f"{k} ({v})" for k, v in features.items()) or "none"))
    inter = files["interactions"]
    data["interactions_csv"] = os.path.relpath(inter.path.resolve(), config_dir.resolve())
    if len(inter.columns) < 2:
        if inter.columns:
            inter.problems.append(f"{inter.path.name}: one column only; interactions need a "
                                  "user id and an item id column")
        return data, why
    user = _id_column(inter, ids.get("users", "user_id"), _USER_NAME)
    item = _id_column(inter, ids.get("items", "item_id"), re.compile(r"(?i)item|movie|product"
                      r"|book|track|song|article|video|doc|post"), exclude=(user.name,))
    mapping = {"user_id": user.name, "item_id": item.name}
    for column in (user.name, item.name):
        _check_ids(inter, column, unique=False)
    others = [c for c in inter.columns if c.name not in (user.name, item.name)]
    binary = _pick(others, lambda c: c.kind == "numeric" and c.detail == "0/1")
    rating = _pick(others, lambda c: c.kind == "numeric" and bool(_RATING_NAME.search(c.name)))
    stamp = _pick(others, lambda c: c.kind == "timestamp")
    mapping["label"] = binary.name if binary else None
    mapping["rating"] = rating.name if rating else None
    mapping["timestamp"] = None
    if stamp and stamp.detail == "Unix seconds":
        mapping["timestamp"] = stamp.name
    elif stamp:
        inter.problems.append(
            f"{inter.path.name}: column {stamp.name!r} holds {stamp.detail}; the data stage "
            "reads whole seconds since 1970 (convert it to use temporal splits), so the "
            "suggestion leaves it out")
    data["columns"]["interactions"] = mapping
    if label is None:
        if binary:
            label = "column"
            why.append(f"label: column {binary.name!r} holds 0/1, read as the label")
        elif rating:
            values = pd.to_numeric(inter.frame[rating.name], errors="coerce")
            top = float(values.max())
            threshold = 4 if top <= 5 else 8 if top <= 10 else round(0.8 * top, 1)
            label = f"rating >= {threshold:g}"
            why.append(f"label: {label!r} ({rating.name!r} runs {rating.detail}); rows below "
                       "become explicit negatives. Every row an interaction instead: "
                       "--label all_positive")
        else:
            label = "all_positive"
            why.append("label: 'all_positive' (no 0/1 column and no rating: every row is an "
                       "interaction)")
    else:
        why.append(f"label: {label!r} (as asked)")
    mode, _, _ = parse_label(label)
    if mode == "rating" and rating is None:
        raise ConfigError(f"--label {label!r}: {inter.path.name} has no numeric rating column")
    if mode == "column" and binary is None:
        raise ConfigError(f"--label column: {inter.path.name} has no 0/1 column to read")
    data["label"] = label
    data["missing_values"] = sorted(set(data["missing_values"]))
    if data["missing_values"]:
        why.append(f"missing_values: {data['missing_values']} read as 'unknown', not a value")
    unused = [c.name for c in others if c.name not in mapping.values()]
    if unused:
        why.append(f"interactions: not used: {', '.join(unused)}")
    return data, why


def base_config(path: str | Path | None) -> dict[str, Any]:
    """The configuration a suggestion starts from: `path`, else `config.json` in the current
    directory or the project's, else the built-in defaults (all as plain dicts)."""
    here = Path(__file__).resolve().parents[2] / "config.json"
    for candidate in ([Path(path)] if path else [Path("config.json"), here]):
        if candidate.is_file():
            return json.loads(candidate.read_text())
        if path:
            raise FileNotFoundError(f"--base {path}: no such file")
    return Config().to_dict()


def dry_run(config: dict[str, Any], config_dir: Path) -> str:
    """Load the data as the data stage would with `config`; one line: the counts, or why not."""
    from twotower_utils.data.datasets import load_dataset

    try:
        raw = load_dataset(config_from_dict(config, root=config_dir))
    except (DataValidationError, ConfigError, ValueError) as error:
        return f"REFUSED: {error}"
    counts = raw.labels
    return (f"OK: {len(raw.users):,} users, {len(raw.items):,} items, {len(raw.interactions):,}"
            f" interactions after input hygiene ({counts.get('positives', 0):,} positive and "
            f"{counts.get('explicit_negatives', 0):,} explicit negative rows by data.label)")


def format_file(info: FileInfo) -> str:
    """The report of one inspected file, as lines of text."""
    lines = [f"{info.role}: {info.path} ({info.rows:,} rows, {len(info.columns)} columns)"]
    lines += [f"  note: {note}" for note in info.notes]
    if info.columns:
        width = max(len(c.name) for c in info.columns) + 2
        lines.append(f"  {'column':<{width}}{'inferred type':<42}{'distinct':>9}{'missing':>9}"
                     "  examples")
        for c in info.columns:
            kind = f"{c.kind} ({c.detail})" if c.detail else c.kind
            lines.append(f"  {c.name:<{width}}{kind:<42}{c.distinct:>9,}{c.missing:>9.1%}  "
                         + ", ".join(repr(e) for e in c.examples))
    lines += [f"  PROBLEM: {problem}" for problem in info.problems] or \
        ["  problems the data stage would refuse: none found"]
    return "\n".join(lines)


def run_inspect(interactions: str | Path, users: str | Path | None = None,
                items: str | Path | None = None, write_config: str | Path | None = None,
                label: str | None = None, base: str | Path | None = None,
                print_=print) -> dict[str, Any]:
    """Inspect the files, print the report and the suggestion, optionally write the config.

    Takes the file paths, where to write the suggested config (None: print only), a
    `data.label` to use instead of the inferred one, the base config (see `base_config`) and
    the print function. Returns the suggested configuration (a dict in config.json's shape).
    The written config is the base with its `data` section replaced by the suggestion.
    """
    if label is not None:
        parse_label(label)  # a bad --label is refused before any file is read
    files = {"interactions": inspect_file(interactions, "interactions")}
    for role, path in (("users", users), ("items", items)):
        if path is not None:
            files[role] = inspect_file(path, role)
    config_dir = Path(write_config).resolve().parent if write_config else Path.cwd()
    config_dir.mkdir(parents=True, exist_ok=True)  # the dry run resolves paths from it
    data, why = suggest_data_section(files, config_dir, label)
    config = copy.deepcopy(base_config(base))
    merged = {**config.get("data", {}), **data}
    order = list(Config().to_dict()["data"])  # config.json's key order, new keys included
    config["data"] = {key: merged[key] for key in sorted(
        merged, key=lambda k: order.index(k) if k in order else len(order))}
    for role in ("users", "items", "interactions"):
        if role in files:
            print_(format_file(files[role]) + "\n")
    print_("suggested data settings (inferred: check them; nothing is applied until you run "
           "with the written config):")
    print_("\n".join(f"  {line}" for line in why))
    shown = {k: v for k, v in data.items() if v not in (None, [], {})}
    print_("\n".join(f"  data.{key} = {json.dumps(value)}" for key, value in shown.items()))
    print_(f"dry run of the data stage's loading with these settings: "
           f"{dry_run(config, config_dir)}")
    if write_config:
        target = Path(write_config)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config, indent=2) + "\n")
        print_(f"wrote {target}; run it with: make run ARGS=\"--config {target}\"")
    return config
