"""Tables for exploring a dataset and checking what preprocessing wrote (notebooks 01 and 02).

Pure pandas/numpy, no TensorFlow: the EDA and preprocessing notebooks must start fast. Each
function takes a `RawDataset` (see rawdata.py), its DataFrames or a `ProcessedData` and
returns a small DataFrame or Series ready to display or plot.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from twotower_utils.data.processed import ProcessedData
from twotower_utils.data.rawdata import RawDataset
from twotower_utils.display import Note

__all__ = [
    "positives",
    "dataset_summary",
    "activity_counts",
    "long_tail_table",
    "feature_summary",
    "feature_association",
    "describe_split",
    "interactions_per_period",
    "split_sizes",
    "preprocessing_checks",
    "require_passed",
    "vocabulary_summary",
]


def positives(interactions: pd.DataFrame) -> pd.DataFrame:
    """The rows with label 1 (all rows when there is no `label` column)."""
    if "label" not in interactions.columns:
        return interactions
    return interactions[interactions["label"].to_numpy() == 1]


def dataset_summary(raw: RawDataset) -> pd.DataFrame:
    """One row per headline number of a dataset: sizes, sparsity, activity, ratings, time span.

    Takes a `RawDataset`; returns a frame indexed by `quantity` with one column `value`
    (formatted strings, so the table reads the same in HTML and in a terminal).
    """
    inter = raw.interactions
    pos = positives(inter)
    users, items = activity_counts(inter)
    num_users = len(set(raw.users["user_id"]).union(pos["user_id"]))
    num_items = len(set(raw.items["item_id"]).union(pos["item_id"]))
    pairs = len(pos[["user_id", "item_id"]].drop_duplicates())
    density = pairs / float(num_users * num_items) if num_users and num_items else 0.0
    rows = [
        ("dataset", raw.name),
        ("users (feature table / with interactions)", f"{len(raw.users):,} / {len(users):,}"),
        ("items (feature table / with interactions)", f"{len(raw.items):,} / {len(items):,}"),
        ("positive interactions", f"{len(pos):,}"),
        ("explicit negatives (label 0)", f"{len(inter) - len(pos):,}"),
        ("distinct user-item pairs", f"{pairs:,}"),
        ("density (pairs / users x items)", f"{density:.4%}"),
        ("sparsity", f"{1 - density:.4%}"),
        ("interactions per user: median / mean / max",
         f"{users.median():.0f} / {users.mean():.1f} / {users.max():,}" if len(users) else "-"),
        ("interactions per item: median / mean / max",
         f"{items.median():.0f} / {items.mean():.1f} / {items.max():,}" if len(items) else "-"),
        ("items with fewer than 5 interactions",
         f"{(items < 5).sum():,} ({(items < 5).mean():.0%})" if len(items) else "-"),
        ("user features", _features_text(raw.user_features)),
        ("item features", _features_text(raw.item_features)),
    ]
    if "rating" in inter.columns and inter["rating"].notna().any():
        ratings = inter["rating"].dropna()
        rows.append(("ratings: min / mean / max",
                     f"{ratings.min():g} / {ratings.mean():.2f} / {ratings.max():g}"))
    if "timestamp" in inter.columns and inter["timestamp"].notna().any():
        times = pd.to_datetime(inter["timestamp"].dropna(), unit="s")
        rows.append(("time span", f"{times.min():%Y-%m-%d} to {times.max():%Y-%m-%d} "
                                  f"({(times.max() - times.min()).days} days)"))
    return pd.DataFrame(rows, columns=["quantity", "value"]).set_index("quantity")


def _features_text(features: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in features.items()) or "none"


def activity_counts(interactions: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Positive interactions per user and per item, each sorted descending (name `count`)."""
    pos = positives(interactions)
    return pos["user_id"].value_counts(), pos["item_id"].value_counts()


def long_tail_table(item_counts: pd.Series,
                    shares: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)) -> pd.DataFrame:
    """How concentrated popularity is: the share of interactions the top x% of items receive.

    Takes interactions per item; returns a frame indexed by `top items` with columns `items`
    and `share of interactions`.
    """
    counts = np.sort(np.asarray(item_counts, dtype=float))[::-1]
    total = counts.sum() or 1.0
    rows = []
    for share in shares:
        n = max(1, int(round(share * len(counts))))
        rows.append((f"top {share:.0%}", n, f"{counts[:n].sum() / total:.1%}"))
    return pd.DataFrame(rows, columns=["top items", "items", "share of interactions"]).set_index(
        "top items")


def feature_summary(table: pd.DataFrame, features: Mapping[str, str],
                    side: str = "user") -> pd.DataFrame | Note:
    """One row per declared feature: type, distinct values, missing share and a short profile.

    Takes a user or item table, `{column: type}` and the side's name; numeric features are
    profiled by mean/std/min/max, categorical and multi-hot ones by their most frequent
    values. Indexed by feature. No declared features: a `Note` saying so in one sentence.
    """
    if not features:
        return Note(f"This dataset declares no {side} features: the {side} tower sees the "
                    f"{side} id" + (" (and the user's history)" if side == "user" else "")
                    + " only, so there is nothing to profile here.")
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ValueError(f"features {missing} are not columns of the table "
                         f"(it has {list(table.columns)})")
    rows = []
    for column, kind in features.items():
        values = table[column]
        blank = values.isna() | (values.astype(str).str.strip() == "")
        if kind == "numeric":
            numbers = pd.to_numeric(values, errors="coerce")
            profile = (f"mean {numbers.mean():.2f}, std {numbers.std():.2f}, "
                       f"range {numbers.min():g} to {numbers.max():g}")
            distinct = numbers.nunique()
        else:
            text = values[~blank].astype(str)
            if kind == "multi_hot":
                lengths = text.str.split("|").str.len()
                text = text.str.split("|").explode().str.strip()
                profile = f"{lengths.mean():.1f} values per row; most common: "
            else:
                profile = "most common: "
            top = text.value_counts().head(3)
            profile += ", ".join(f"{v} ({n / max(len(values), 1):.0%})" for v, n in top.items())
            distinct = text.nunique()
        rows.append((column, kind, int(distinct), f"{blank.mean():.1%}", profile))
    columns = ["feature", "type", "distinct values", "missing", "profile"]
    return pd.DataFrame(rows, columns=columns).set_index("feature")


def feature_association(table: pd.DataFrame, features: Mapping[str, str]
                        ) -> tuple[pd.DataFrame | None, str, str]:
    """The table behind the EDA heatmap: how a side's feature values go together.

    Takes a user or item table and `{column: type}`. The first multi-hot feature (e.g. the
    genres) gives its co-occurrence: the share of rows with the row's value that also have
    the column's (diagonal left empty). Without one, two or more numeric features give their
    Spearman correlations. Returns `(matrix, title, what a cell means)`, or `(None, "", "")` when
    neither exists.
    """
    multi = [c for c, kind in features.items() if kind == "multi_hot" and c in table.columns]
    numeric = [c for c, kind in features.items() if kind == "numeric" and c in table.columns]
    if multi:
        column = multi[0]
        text = table[column].dropna().astype(str).str.split("|")
        flags = pd.get_dummies(text.explode().str.strip()).groupby(level=0).max()
        flags = flags.loc[:, [c for c in flags.columns if c]].astype(float)
        together = flags.T @ flags
        share = together.div(np.maximum(np.diag(together), 1.0), axis=0)
        # The diagonal (always 1) would set the colour scale and hide the pairs that matter.
        share = share.mask(np.eye(len(share), dtype=bool))
        share.index.name, share.columns.name = column, f"{column} also present"
        return (share, f"{column}: co-occurrence", "share of the row's items that also have "
                "the column's value")
    if len(numeric) >= 2:
        matrix = table[numeric].apply(pd.to_numeric, errors="coerce").corr(method="spearman")
        matrix.index.name = matrix.columns.name = "feature"
        return matrix, "Numeric features: Spearman correlation", "Spearman rho"
    return None, "", ""


# How each split method chooses the held-out interactions, in words for the reports.
_SPLIT_WORDS = {
    "temporal": "each user's latest interactions (a temporal split: the test period follows "
                "the training period)",
    "leave_last_out": "each user's last interaction (by time where there are timestamps)",
    "benchmark": "a random share of each item's interactions (the benchmark split; "
                 "not ordered in time)",
    "random": "a random share of each user's interactions (a random split; not ordered in "
              "time)",
    "cold_items": "every interaction of a random share of the items (a cold-item split: "
                  "those items are never seen in training)",
}


def describe_split(method: str) -> Note:
    """One sentence saying which interactions the test split holds, for split `method`."""
    words = _SPLIT_WORDS.get(method, f"the interactions the {method!r} split holds out")
    return Note(f"The test items are {words}.")


def interactions_per_period(interactions: pd.DataFrame, freq: str = "W") -> pd.Series:
    """Positive interactions per period (pandas offset alias, "W" = week), indexed by date.

    Returns an empty Series when the interactions have no `timestamp` column.
    """
    pos = positives(interactions)
    if "timestamp" not in pos.columns or pos["timestamp"].isna().all():
        return pd.Series(dtype="int64", name="interactions")
    times = pd.to_datetime(pos["timestamp"].dropna(), unit="s")
    counts = times.dt.to_period(freq).value_counts().sort_index()
    counts.index = counts.index.to_timestamp()
    return counts.rename("interactions")


def split_sizes(stats: Mapping) -> pd.DataFrame:
    """Rows, users, items and cold users/items per split, from a processed `stats.json` dict.

    Adds `share of rows`. Indexed by split name (train, validation, test).
    """
    if "splits" not in stats:
        raise ValueError("stats has no 'splits' entry: pass the processed data's stats.json")
    frame = pd.DataFrame(stats["splits"]).T
    frame.index.name = "split"
    frame["share of rows"] = (frame["rows"] / frame["rows"].sum()).map("{:.1%}".format)
    return frame


def _pair_keys(frame: pd.DataFrame, num_items: int) -> np.ndarray:
    return frame["user_idx"].to_numpy(np.int64) * num_items + frame["item_idx"].to_numpy(np.int64)


def preprocessing_checks(data: ProcessedData) -> pd.DataFrame:
    """Invariants of the processed data, each with a pass/fail and the count behind it.

    Takes a `ProcessedData`; returns a frame indexed by `check` with columns `passed` (bool)
    and `detail`. Checks
    that no validation or test pair is in training, that sampled negatives are never a
    training positive of their user, that every training id is in the vocabularies, and that
    the training history matrix matches the training split.
    """
    n_items = data.num_items
    train = _pair_keys(data.train, n_items)
    rows = []
    for split in ("validation", "test"):
        leaked = np.isin(_pair_keys(getattr(data, split), n_items), train).sum()
        rows.append((f"no {split} (user, item) pair appears in training", leaked == 0,
                     f"{leaked:,} of {len(getattr(data, split)):,} {split} rows found in train"))
    bad_negatives = np.isin(_pair_keys(data.negatives, n_items), train).sum()
    rows.append(("sampled negatives exclude the user's training positives", bad_negatives == 0,
                 f"{bad_negatives:,} of {len(data.negatives):,} negatives are positives"))
    oov = int((data.train["user_idx"] == 0).sum() + (data.train["item_idx"] == 0).sum())
    rows.append(("every training user and item is in the vocabularies", oov == 0,
                 f"{oov:,} out-of-vocabulary ids in train"))
    history_pairs = int(data.history.nnz)
    train_pairs = len(np.unique(train))
    rows.append(("training history matches the training split", history_pairs == train_pairs,
                 f"{history_pairs:,} history entries, {train_pairs:,} distinct train pairs"))
    return pd.DataFrame(rows, columns=["check", "passed", "detail"]).set_index("check")


def require_passed(checks: pd.DataFrame) -> None:
    """Raise AssertionError listing every failed row of `preprocessing_checks` output.

    A notebook calls this after displaying the checks, so a broken split stops the pipeline
    at the preprocessing stage instead of producing a misleading evaluation.
    """
    failed = checks[~checks["passed"].astype(bool)]
    if len(failed):
        lines = [f"{check}: {row.detail}" for check, row in zip(failed.index, failed.itertuples(),
                                                                 strict=True)]
        raise AssertionError("preprocessing checks failed:\n  - " + "\n  - ".join(lines))


def vocabulary_summary(data: ProcessedData) -> pd.DataFrame:
    """Ids and encoded features per side: vocabulary size, numeric scaling, multi-hot length.

    Returns a frame indexed by (side, feature) with columns type, vocabulary size, notes.
    """
    rows = [
        ("user", "user_id", "id", len(data.user_vocab), "index 0 = unknown user"),
        ("item", "item_id", "id", len(data.item_vocab), "index 0 = unknown item"),
    ]
    for side in ("user", "item"):
        for spec in data.feature_specs.get(side, []):
            kind = spec["type"]
            if kind == "numeric":
                size, note = None, f"standardised: mean {spec['mean']:.2f}, std {spec['std']:.2f}"
            else:
                size = len(spec["vocabulary"])
                note = ", ".join(spec["vocabulary"][:5]) + (" ..." if size > 5 else "")
                if kind == "multi_hot":
                    note = f"up to {spec['max_len']} per row: {note}"
            rows.append((side, spec["name"], kind, size, note))
    frame = pd.DataFrame(rows, columns=["side", "feature", "type", "vocabulary size", "notes"])
    frame["vocabulary size"] = frame["vocabulary size"].astype("Int64")
    return frame.set_index(["side", "feature"])
