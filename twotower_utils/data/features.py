"""Feature specs and raw feature values: what the towers' encoding layers are built from and read.

The data stage fits one JSON-able spec per declared feature column of users.csv / items.csv
(`fit_feature_specs`, the "adapt" step) and stores each column's raw values in one clean form
(`raw_feature_values`). The encoding itself (value -> code, standardisation, multi-hot
lists) is done by the towers' own Keras preprocessing layers
(`twotower_utils.model.encoding.FeatureEncoding`), in training and in every exported
SavedModel alike, so there is one encoder and no training/serving skew:

- categorical: the stripped value ("" = missing); a value at vocabulary position p gets code
  p + 1, anything else 0 (unknown);
- numeric: float64 (NaN = missing); standardised with the fitted mean and standard deviation,
  missing -> 0 (the mean);
- multi_hot: `|`-separated values; known ones become codes, padded with 0 to the longest list
  seen in fitting.

No TensorFlow here.
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


def raw_feature_values(column: pd.Series, spec: Mapping[str, Any]) -> np.ndarray:
    """One feature column in the form the encoding layers read: float64 (NaN = missing) for
    a numeric spec, else a unicode array of stripped strings ("" = missing)."""
    if spec["type"] == "numeric":
        return pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
    return _clean_strings(column).fillna("").to_numpy(dtype=str)


def raw_feature_tables(table: pd.DataFrame, specs: Iterable[Mapping[str, Any]]
                       ) -> dict[str, np.ndarray]:
    """`raw_feature_values` of every spec's column of `table`, keyed by column name; a missing
    column raises a KeyError naming it and the columns the specs were fitted on."""
    specs = list(specs)
    missing = [spec["name"] for spec in specs if spec["name"] not in table.columns]
    if missing:
        raise KeyError(f"feature columns missing: {', '.join(missing)} (the specs were "
                       f"fitted on {', '.join(spec['name'] for spec in specs)})")
    return {spec["name"]: raw_feature_values(table[spec["name"]], spec) for spec in specs}


def raw_feature_record(record: Mapping[str, Any], specs: Iterable[Mapping[str, Any]]
                       ) -> dict[str, np.ndarray]:
    """One raw record (a dict, values as in the csv) as one-row `raw_feature_tables`; an
    absent feature counts as missing."""
    specs = list(specs)
    row = pd.DataFrame({spec["name"]: [record.get(spec["name"])] for spec in specs},
                       dtype=object)
    return raw_feature_tables(row, specs)
