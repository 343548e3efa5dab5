"""Reading `interactions.csv` as it is: the column mapping and the label modes.

A raw log (`userId,movieId,rating,timestamp`) is read through `data.columns.interactions`,
and its labels come from `data.label`: the file's 0/1 column (`"column"`), every row
(`"all_positive"`), or a threshold on the rating (`"rating >= 4"`: rows below it become
explicit negatives, label 0). The choice and the counts it produced are logged and kept, so
the data stage's output and the run summary say how the labels were made. Only numpy,
pandas and the standard library.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import InteractionsColumns, parse_label
from twotower_utils.data.csvread import read_csv, row_error, to_number
from twotower_utils.logs import report

__all__ = ["apply_label_mode", "derive_labels", "read_interactions"]

_DEFAULTS = InteractionsColumns()
_BINARY = "0 or 1 (1 = interacted, 0 = explicit negative)"


def derive_labels(label: str, rows: int, label_values: pd.Series | None = None,
                  ratings: pd.Series | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """The labels `data.label` makes for `rows` interactions, with their counts.

    Takes `data.label` ("column", "all_positive" or "rating >= t"/"rating > t"), the number
    of rows, the 0/1 label values (mode "column") and the ratings (mode "rating", no missing
    values). Returns `(labels as int8, counts, how)`: `counts` holds `mode`, `rows`,
    `positives` and `explicit_negatives`; `how` says in words how the labels were made.
    """
    mode, operator, threshold = parse_label(label)
    if mode == "all_positive":
        labels = np.ones(rows, dtype=np.int8)
        how = "every row is a positive interaction"
    elif mode == "column":
        labels = np.asarray(label_values, dtype=np.int8)
        how = "labels read from the label column (0 = explicit negative)"
    else:
        values = np.asarray(ratings, dtype=np.float64)
        labels = (values >= threshold if operator == ">=" else values > threshold)
        labels = labels.astype(np.int8)
        how = (f"rating {operator} {threshold:g} is a positive; the rows below it are kept as "
               "explicit negatives (label 0)")
    positives = int(labels.sum())
    counts = {"mode": label, "rows": int(rows), "positives": positives,
              "explicit_negatives": int(rows - positives)}
    return labels, counts, how


def apply_label_mode(interactions: pd.DataFrame, label: str, source: str,
                     notes: list[str] | None) -> dict[str, Any]:
    """Relabel a contract frame (`label`, optional `rating`) in place by `data.label`.

    For sources built in memory (the synthetic generator): "column" keeps the labels.
    Returns the counts of `derive_labels`, also logged and appended to `notes`.
    """
    ratings = interactions.get("rating")
    mode, _, _ = parse_label(label)
    if mode == "rating" and ratings is None:
        raise ValueError(f"data.label = {label!r}: {source} has no rating column; set "
                         "data.label to 'column' or 'all_positive'")
    labels, counts, how = derive_labels(label, len(interactions), interactions["label"],
                                        ratings)
    interactions["label"] = labels
    _report_counts(source, label, counts, how, notes)
    return counts


def read_interactions(path: Path, names: Mapping[str, str | None], label: str,
                      notes: list[str]) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """Read `path` with the column names `names` (`data.columns.interactions` as a dict).

    Returns `(frame, counts, ignored)`: the frame holds the two id columns under the file's
    own names (for `normalise_ids`' messages) and `label` (int8, by `data.label`), plus
    `rating` (float32) and `timestamp` (int64 seconds) when the file has them; `counts` are
    those of `derive_labels`; `ignored` lists the columns not used (also noted). A rating
    or timestamp column mapped to a name other than the default must exist. Raises
    `DataValidationError` naming the file, column, first offending row and the fix.
    """
    mode, _, _ = parse_label(label)
    user, item = names["user_id"], names["item_id"]
    wanted = {role: names.get(role) for role in ("label", "rating", "timestamp")}
    required = [user, item]
    for role, column in wanted.items():
        needed = (role == "label" and mode == "column") or (role == "rating" and mode == "rating")
        if column is not None and (needed or column != getattr(_DEFAULTS, role)):
            required.append(column)
    hint = (f"name the file's columns in data.columns.interactions (now {dict(names)})"
            + ("; without a 0/1 label column set data.label to 'all_positive' (every row is an "
               "interaction) or to a threshold such as 'rating >= 4'" if mode == "column"
               else "")
            + f"; `python -m twotower_utils.data inspect --interactions {path}` suggests both")
    frame = read_csv(path, required, hint, notes)
    present = {role: c for role, c in wanted.items() if c is not None and c in frame.columns}
    label_values = ratings = None
    if "rating" in present:
        expected = ("a number on every row: data.label = "
                    f"{label!r} reads it; fill it in or remove the row, or set data.label to "
                    "'all_positive'") if mode == "rating" else "a number or an empty cell"
        ratings = to_number(path, frame, present["rating"], expected,
                            allow_missing=mode != "rating").astype(np.float32)
    if mode == "column":
        column = present["label"]
        expected = (f"{_BINARY}; for a rating set data.label to a threshold such as "
                    "'rating >= 4', or to 'all_positive' when every row is an interaction")
        label_values = to_number(path, frame, column, expected, allow_missing=False,
                                 integer=True)
        outside = ~label_values.isin([0, 1]).to_numpy()
        if outside.any():
            raise row_error(path, frame, column, outside, "label outside {0, 1}:", expected)
    labels, counts, how = derive_labels(label, len(frame), label_values, ratings)
    out = {user: frame[user], item: frame[item], "label": labels}
    if ratings is not None:
        out["rating"] = ratings
    if "timestamp" in present:
        out["timestamp"] = to_number(
            path, frame, present["timestamp"], "whole seconds since 1970-01-01 (Unix time); "
            "convert dates first, or set data.columns.interactions.timestamp to null",
            allow_missing=False, integer=True,
        ).astype(np.int64)
    used = {user, item, *(c for role, c in present.items()
                          if role != "label" or mode == "column")}
    ignored = [c for c in frame.columns if c not in used]
    _report_counts(path.name, label, counts, how, notes)
    if ignored:
        report(notes, f"{path.name}: ignored column(s) {', '.join(ignored)} (not used: the "
                      "data stage reads the two ids, the label, rating and timestamp)",
               logging.INFO)
    return pd.DataFrame(out, index=frame.index), counts, ignored


def _report_counts(source: str, label: str, counts: dict[str, Any], how: str,
                   notes: list[str] | None) -> None:
    report(notes, f"{source}: data.label = {label!r} ({how}): {counts['positives']:,} positive "
                  f"and {counts['explicit_negatives']:,} explicit negative row(s) of "
                  f"{counts['rows']:,}", logging.INFO)
