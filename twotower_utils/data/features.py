"""Feature encoders: raw user/item feature columns to the integer and float arrays the towers eat.

A `FeatureEncoder` is fitted once on a feature table (users.csv or items.csv) and described by
JSON-able specs, so the same encoding can be rebuilt at serving time for a new user or item
(cold start) without the training data:

- categorical: value -> code (value at vocabulary position p has code p + 1; 0 = unknown);
- numeric: standardised with the fitted mean and standard deviation (missing -> 0, the mean);
- multi_hot: `|`-separated values -> codes padded with 0 to the longest list seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

MULTI_HOT_SEPARATOR = "|"
_MISSING = ("", "nan", "none", "null")


def _clean_strings(values: pd.Series) -> pd.Series:
    # Missing values and blank strings both mean "unknown"; they must never become a category.
    text = values.astype("string").str.strip()
    return text.mask(text.isna() | text.str.lower().isin(_MISSING))


def _split_multi_hot(values: pd.Series) -> list[list[str]]:
    out = []
    for value in _clean_strings(values).tolist():
        if value is None or value is pd.NA:
            out.append([])
        else:
            parts = (part.strip() for part in str(value).split(MULTI_HOT_SEPARATOR))
            out.append([part for part in parts if part])
    return out


def fit_feature_specs(table: pd.DataFrame, declared: Mapping[str, str]) -> list[dict[str, Any]]:
    """Fit one spec per declared column of `table` ({column: type}).

    Returns JSON-able dicts: `{"name", "type"}` plus `vocabulary` (categorical, multi_hot),
    `mean`/`std` (numeric) and `max_len` (multi_hot).
    """
    specs = []
    for name, kind in declared.items():
        column = table[name]
        spec: dict[str, Any] = {"name": name, "type": kind}
        if kind == "categorical":
            spec["vocabulary"] = sorted(set(_clean_strings(column).dropna().tolist()))
        elif kind == "numeric":
            numbers = pd.to_numeric(column, errors="coerce").astype("float64")
            mean = float(numbers.mean()) if numbers.notna().any() else 0.0
            std = float(numbers.std(ddof=0)) if numbers.notna().sum() > 1 else 0.0
            spec["mean"], spec["std"] = mean, std if std > 0 else 1.0
        elif kind == "multi_hot":
            lists = _split_multi_hot(column)
            spec["vocabulary"] = sorted({value for values in lists for value in values})
            spec["max_len"] = max((len(values) for values in lists), default=0) or 1
        else:
            raise ValueError(f"feature {name!r}: unknown type {kind!r}")
        specs.append(spec)
    return specs


class FeatureEncoder:
    """Encodes raw feature columns with fitted specs (see `fit_feature_specs`).

    `FeatureEncoder(specs).transform(df)` returns `{column: array}` with one row per row of
    `df`: int32 codes (categorical), float32 standardised values (numeric), or an int32
    `[rows, max_len]` matrix of codes padded with 0 (multi_hot). Unknown values map to 0.
    """

    def __init__(self, specs: Iterable[Mapping[str, Any]]):
        self.specs = [dict(spec) for spec in specs]
        self._codes = {
            spec["name"]: {value: code for code, value in enumerate(spec["vocabulary"], start=1)}
            for spec in self.specs
            if "vocabulary" in spec
        }

    @classmethod
    def fit(cls, table: pd.DataFrame, declared: Mapping[str, str]) -> FeatureEncoder:
        """Fit on `table` for the declared `{column: type}` and return the encoder."""
        return cls(fit_feature_specs(table, declared))

    @property
    def names(self) -> list[str]:
        """The encoded column names, in declaration order."""
        return [spec["name"] for spec in self.specs]

    def transform(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Encode the declared columns of `table`; a missing column raises a KeyError naming it."""
        missing = [name for name in self.names if name not in table.columns]
        if missing:
            raise KeyError(
                f"feature columns missing: {', '.join(missing)} (the encoder was fitted on "
                f"{', '.join(self.names)})"
            )
        return {spec["name"]: self._encode(spec, table[spec["name"]]) for spec in self.specs}

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Encode one raw record (a dict); absent features count as unknown."""
        row = {name: [record.get(name)] for name in self.names}
        return self.transform(pd.DataFrame(row, dtype=object))

    def _encode(self, spec: Mapping[str, Any], column: pd.Series) -> np.ndarray:
        kind, name = spec["type"], spec["name"]
        if kind == "numeric":
            numbers = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
            standardised = (numbers - spec["mean"]) / spec["std"]
            return np.nan_to_num(standardised, nan=0.0).astype(np.float32)
        codes = self._codes[name]
        if kind == "categorical":
            mapped = _clean_strings(column).map(codes)
            return mapped.fillna(0).to_numpy(dtype=np.int32)
        matrix = np.zeros((len(column), spec["max_len"]), dtype=np.int32)
        for row, values in enumerate(_split_multi_hot(column)):
            known = [codes[value] for value in values if value in codes][: spec["max_len"]]
            matrix[row, : len(known)] = known
        return matrix
