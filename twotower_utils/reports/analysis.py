"""Tables behind the training and evaluation notebooks (03, 04), from arrays only.

Nothing here imports TensorFlow: the functions take top-k index matrices (`[num_users, k]`,
row = user index, -1 = empty slot, as `twotower_utils.evaluation.topk` returns them), embedding
matrices (row = index) and a `ProcessedData`, so the model, the baselines and any future
model are analysed the same way.

The test protocol is `twotower_utils.evaluation.protocol`'s (`EvalProtocol` wraps it): the
"training part" is train + validation; each user's training-part items are never
recommended; candidates are the items seen in the training part; users are scored against
their test items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.data.processed import ProcessedData
from twotower_utils.evaluation.baselines import (
    DEFAULT_EASE_GRID,
    DEFAULT_KNN_GRID,
    EASE,
    EASE_MAX_DIM,
    ItemKNN,
    MostPopular,
    score_chunk_size,
    similarity_baseline,
    tune_ease,
    tune_item_knn,
)
from twotower_utils.evaluation.protocol import evaluation_protocol, scored_users
from twotower_utils.evaluation.ranking import ranking_metrics
from twotower_utils.evaluation.topk import top_k_from_scores, top_k_scores

EASE_GRID_FAST = (100.0, 500.0)  # FAST runs tune EASE on two values only
KNN_GRID_FAST = (20, 100)  # and item-kNN, where it stands in, on two

__all__ = ["EvalProtocol", "baseline_top_lists", "metric_table", "item_popularity",
           "user_activity", "metrics_by_user_bucket", "recall_by_item_bucket", "bucket_table",
           "item_names", "add_item_names", "pick_example_users", "example_recommendations",
           "tower_table", "training_summary", "load_embeddings", "embedding_top_list",
           "styled_metrics", "training_record", "evaluation_record", "EASE_GRID_FAST",
           "KNN_GRID_FAST"]

logger = logging.getLogger(__name__)


class EvalProtocol:
    """What the test evaluation needs: `exclude` and `relevant` csr `[U, I]`, `candidates`.

    The test split's `evaluation.protocol.evaluation_protocol`: `exclude` holds the
    training-part (train + validation) positives, `candidates` the items seen there,
    `relevant` the test positives, `users` the user indices with test items; plus `depth`,
    the list length to compute (the largest of `k_values` and 10, the cut-off of the
    breakdowns).
    """

    def __init__(self, data: ProcessedData, k_values: Sequence[int] = (10,)):
        self.depth = max(*k_values, 10)
        protocol = evaluation_protocol(data, "test")
        self.exclude, self.candidates = protocol.exclude, protocol.candidates
        self.relevant, self.users = protocol.relevant, protocol.users


def _full_rows(top_idx: np.ndarray, users: np.ndarray, num_users: int) -> np.ndarray:
    full = np.full((num_users, top_idx.shape[1]), -1, dtype=np.int64)
    full[users] = top_idx
    return full


def baseline_top_lists(data: ProcessedData, k: int, grid: Sequence[float] | None = None,
                       fast: bool = False, tune_k: int = 10,
                       knn_grid: Sequence[int] | None = None, ease_max_dim: int = EASE_MAX_DIM,
                       ) -> tuple[dict[str, np.ndarray], dict[str, float], pd.DataFrame]:
    """Test-time top-k lists of the baselines: most-popular and EASE (l2 tuned on validation),
    or item-kNN in EASE's place past `ease_max_dim` (see `baselines.similarity_baseline`).

    EASE's l2 (item-kNN's neighbour count) maximises nDCG@`tune_k` on the validation split
    (fitted on train; never the test split) over `grid` (default `DEFAULT_EASE_GRID`, or
    `EASE_GRID_FAST` when `fast`; `knn_grid` likewise for item-kNN); then both baselines are
    refitted on the training part and list `k` items; one INFO line on this module's logger
    says which baseline ran and why. Returns `(top_lists, fit_seconds, tuning)`:
    `{"most_popular": [U, k], "ease" | "item_knn": [U, k]}` (rows of users without test items
    are -1), seconds per model (refit and test lists; the tuning time is in the note), and
    the tuning table (indexed by "l2" or "neighbours", with a `chosen` column;
    `attrs["baseline"]` and `attrs["note"]` say which baseline and why).
    """
    protocol = EvalProtocol(data)
    train, validation = data.interactions("train"), data.interactions("validation")
    name, note = similarity_baseline(*train.shape, max_dim=ease_max_dim)
    started = time.perf_counter()
    if name == "ease":
        grid = tuple(grid or (EASE_GRID_FAST if fast else DEFAULT_EASE_GRID))
        best, tuning = tune_ease(train, validation, grid, k=tune_k)
        model, column = EASE(l2=best), "l2"
    else:
        grid = tuple(knn_grid or (KNN_GRID_FAST if fast else DEFAULT_KNN_GRID))
        best, tuning = tune_item_knn(train, validation, grid, k=tune_k)
        model, column = ItemKNN(neighbours=best), "neighbours"
    tune_seconds = time.perf_counter() - started
    note = f"{note}; {column} = {best:g} chosen on validation in {tune_seconds:.1f} s"
    logger.info(note)
    tuning["chosen"] = tuning[column] == best
    keep = [f"{m}@{tune_k}" for m in ("ndcg", "recall", "precision", "map")]
    tuning = tuning.set_index(column)[[*keep, "fit_seconds", "chosen"]]
    tuning.attrs.update(baseline=name, note=note)
    top_lists, seconds = {}, {}
    for key, baseline in (("most_popular", MostPopular()), (name, model)):
        started = time.perf_counter()
        baseline.fit(protocol.exclude)
        top_idx, _ = top_k_from_scores(
            lambda users, m=baseline: m.scores(protocol.users[users]), len(protocol.users), k,
            exclude=protocol.exclude[protocol.users], candidates=protocol.candidates,
            chunk_size=score_chunk_size(protocol.exclude.shape[1]))
        top_lists[key] = _full_rows(top_idx, protocol.users, data.num_users)
        seconds[key] = time.perf_counter() - started
    return top_lists, seconds, tuning


def metric_table(top_lists: Mapping[str, np.ndarray], relevant: sp.csr_matrix,
                 k_values: Sequence[int], metrics: Sequence[str],
                 num_candidates: int | None = None) -> pd.DataFrame:
    """Metrics of each model's top-k lists at each k; index = model, columns `<metric>@<k>`."""
    rows = {name: ranking_metrics(np.asarray(top)[:, :max(k_values)], relevant,
                                  tuple(k_values), tuple(metrics), num_items=num_candidates)
            for name, top in top_lists.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def item_popularity(data: ProcessedData) -> np.ndarray:
    """Training-part (train + validation) interactions per item index (`[num_items]`)."""
    items = np.r_[data.train["item_idx"].to_numpy(), data.validation["item_idx"].to_numpy()]
    return np.bincount(items, minlength=data.num_items)


def user_activity(data: ProcessedData) -> np.ndarray:
    """Training-part (train + validation) interactions per user index (`[num_users]`)."""
    users = np.r_[data.train["user_idx"].to_numpy(), data.validation["user_idx"].to_numpy()]
    return np.bincount(users, minlength=data.num_users)


def _quantile_buckets(values: np.ndarray, n_buckets: int
                      ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Equal-count buckets on distinct integer edges: (bucket per value, labels, inner edges).

    Bucket b holds the values in (inner[b-1], inner[b]]; `np.searchsorted(inner, x)` puts
    any other value in the same buckets.
    """
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_buckets + 1)).round())
    inner = edges[1:-1]
    bucket = np.searchsorted(inner, values, side="left")
    lows = np.r_[values.min(), inner + 1]
    highs = np.r_[inner, values.max()]
    labels = [f"{int(lo):,}–{int(hi):,}" if lo < hi else f"{int(lo):,}"
              for lo, hi in zip(lows, highs, strict=True)]
    return bucket, labels, inner


def metrics_by_user_bucket(top_lists: Mapping[str, np.ndarray], relevant: sp.csr_matrix,
                           activity: np.ndarray, k: int = 10,
                           metrics: Sequence[str] = ("ndcg", "recall", "precision"),
                           n_buckets: int = 4) -> pd.DataFrame:
    """Each model's metrics@k per user-activity bucket (equal-count buckets of test users).

    Takes `{model: top_idx [U, K]}`, the test csr, training interactions per user and the
    cut-off. Returns a long frame: `bucket` (training interactions, e.g. "21–45"), `model`,
    `users` and one column per metric.
    """
    users = scored_users(relevant)
    bucket, labels, _ = _quantile_buckets(activity[users].astype(float), n_buckets)
    rows = []
    for b, label in enumerate(labels):
        members = users[bucket == b]
        for name, top in top_lists.items():
            values = ranking_metrics(np.asarray(top)[members, :k], relevant[members], (k,),
                                     tuple(metrics))
            rows.append({"bucket": label, "model": name, "users": len(members),
                         **{m: values[f"{m}@{k}"] for m in metrics}})
    return pd.DataFrame(rows)


def recall_by_item_bucket(top_lists: Mapping[str, np.ndarray], relevant: sp.csr_matrix,
                          popularity: np.ndarray, k: int = 10,
                          n_buckets: int = 4) -> pd.DataFrame:
    """Share of test interactions retrieved in the top k, by the item's training popularity.

    Also reports each bucket's share of all recommended slots (a popularity-bias check).
    Returns a long frame: `bucket` (training interactions of the item), `model`,
    `test interactions`, `recall@k` and `share of recommendations`.
    """
    coo = relevant.tocoo()
    test_users, test_items = coo.row, coo.col
    bucket, labels, inner_edges = _quantile_buckets(popularity[test_items].astype(float),
                                                    n_buckets)
    rows = []
    for name, top in top_lists.items():
        top = np.asarray(top)[:, :k]
        hit = (top[test_users] == test_items[:, None]).any(axis=1)
        shown = top[top >= 0]
        shown_bucket = np.searchsorted(inner_edges, popularity[shown], side="left")
        for b, label in enumerate(labels):
            mask = bucket == b
            rows.append({"bucket": label, "model": name,
                         "test interactions": int(mask.sum()),
                         f"recall@{k}": float(hit[mask].mean()) if mask.any() else 0.0,
                         "share of recommendations": float((shown_bucket == b).mean())
                         if len(shown) else 0.0})
    return pd.DataFrame(rows)


def bucket_table(frame: pd.DataFrame, count_column: str = "users") -> pd.DataFrame:
    """A long bucket frame (`metrics_by_user_bucket`, `recall_by_item_bucket`) pivoted for
    reading: one row per bucket (with its size), one column per (metric, model)."""
    values = [c for c in frame.columns if c not in ("bucket", "model", count_column)]
    table = frame.pivot_table(index=["bucket", count_column], columns="model", values=values,
                              sort=False)
    models = list(dict.fromkeys(frame["model"]))
    return table.reindex(columns=pd.MultiIndex.from_product([values, models]))


def item_names(items: pd.DataFrame, item_vocab: Sequence[str], column: str = "title"
               ) -> np.ndarray:
    """Display name per item index (`[len(vocab) + 1]`): `column` if present, else the id."""
    names = np.asarray(["<unknown item>", *item_vocab], dtype=object)
    if column in items.columns:
        lookup = items.drop_duplicates("item_id").set_index("item_id")[column].astype(str)
        mapped = pd.Series(list(item_vocab)).map(lookup)
        names[1:] = np.where(mapped.isna(), names[1:], mapped.to_numpy(dtype=object))
    return names


def add_item_names(frame: pd.DataFrame, items: pd.DataFrame, column: str = "title"
                   ) -> pd.DataFrame:
    """`frame` (with an `item_id` column) plus the items' `column` (e.g. title) beside it.

    Returns `frame` unchanged when the items have no such column.
    """
    if column not in items.columns:
        return frame
    lookup = items.drop_duplicates("item_id").set_index("item_id")[column]
    position = list(frame.columns).index("item_id") + 1
    out = frame.copy()
    out.insert(position, column, out["item_id"].map(lookup).to_numpy())
    return out


def pick_example_users(relevant: sp.csr_matrix, activity: np.ndarray, n: int = 3) -> np.ndarray:
    """`n` test users spread over activity: the lightest, ..., the heaviest (by quantile)."""
    users = scored_users(relevant)
    order = users[np.argsort(activity[users], kind="stable")]
    picks = np.linspace(0.1, 0.9, n) if n > 1 else [0.5]
    return np.unique(order[[int(q * (len(order) - 1)) for q in picks]])


def example_recommendations(user_idx: Sequence[int], top_idx: np.ndarray, test: pd.DataFrame,
                            names: np.ndarray, user_vocab: Sequence[str], k: int = 10
                            ) -> pd.DataFrame:
    """Side by side per example user: the model's top k and the items they actually liked.

    Takes user indices, the model's `[U, K]` top-k, the test split (`user_idx`, `item_idx`,
    optional `rating`), item display names and the user vocabulary. Returns a frame indexed
    by (user, rank) with columns `recommended`, `hit` ("✓" when the item is among the user's
    test items) and `liked in test` (their test items, best rated first).
    """
    order = [c for c in ("rating", "timestamp") if c in test.columns]
    test = test.sort_values(order, ascending=False, kind="stable") if order else test
    frames = []
    for user in user_idx:
        mine = test[test["user_idx"].to_numpy() == user]
        liked = mine["item_idx"].to_numpy()
        liked_text = [f"{names[i]} ({r:g}★)" if "rating" in mine.columns else str(names[i])
                      for i, r in zip(liked, mine.get("rating", liked), strict=True)]
        recommended = [i for i in np.asarray(top_idx)[user, :k] if i >= 0]
        liked_text = (liked_text + [""] * k)[:len(recommended)]
        frames.append(pd.DataFrame({
            "user": f"user {user_vocab[user - 1]} ({len(liked)} test items)",
            "rank": np.arange(1, len(recommended) + 1),
            "recommended": names[recommended],
            "hit": ["✓" if i in set(liked) else "" for i in recommended],
            "liked in test": liked_text,
        }))
    return pd.concat(frames).set_index(["user", "rank"])


def load_embeddings(models_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The (user, item) embeddings a trained run saved (row = index), without TensorFlow."""
    models_dir = Path(models_dir)
    paths = [models_dir / "user_embeddings.npy", models_dir / "item_embeddings.npy"]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{models_dir}: no {', '.join(missing)}; run the training "
                                "notebook (03_training) for this RUN_ID first")
    return np.load(paths[0]), np.load(paths[1])


def embedding_top_list(user_vectors: np.ndarray, item_vectors: np.ndarray,
                       protocol: EvalProtocol, k: int) -> np.ndarray:
    """The model's test-time top-k (`[U, k]`, -1 rows for users without test items)."""
    top_idx, _ = top_k_scores(user_vectors[protocol.users], item_vectors, k,
                              exclude=protocol.exclude[protocol.users],
                              candidates=protocol.candidates)
    return _full_rows(top_idx, protocol.users, len(user_vectors))


def styled_metrics(table: pd.DataFrame):
    """The metric table transposed (metrics as rows), 4 decimals, each row's best in bold."""
    return (table.T.style.format("{:.4f}")
            .highlight_max(axis=1, props="font-weight: bold; background-color: #e6f4ea"))


def tower_table(tower) -> pd.DataFrame:
    """One row per layer of a built Keras tower: name, kind, shape and trainable parameters.

    Takes a `Tower` (model/towers.py) and only reads Keras layer attributes, so this module needs
    no TensorFlow import. The last row is the total.
    """
    rows = []
    for layer in tower.layers:
        kind = type(layer).__name__
        if hasattr(layer, "input_dim") and hasattr(layer, "output_dim"):
            shape = f"{layer.input_dim:,} rows x {layer.output_dim}"
        elif hasattr(layer, "units"):
            shape = f"-> {layer.units}"
        elif hasattr(layer, "rate"):
            shape = f"rate {layer.rate:g}"
        elif hasattr(layer, "activation"):
            shape = getattr(layer.activation, "__name__", str(layer.activation))
        else:
            shape = ""
        params = int(sum(np.prod(w.shape) for w in layer.trainable_weights))
        rows.append((layer.name, kind, shape, params))
    rows.append(("total", "", "", sum(r[3] for r in rows)))
    return pd.DataFrame(rows, columns=["layer", "kind", "shape", "trainable parameters"]
                        ).set_index("layer")


def training_summary(result) -> pd.DataFrame:
    """Headline facts of a `TrainingResult`: epochs run, best epoch and metric, time; with
    a refit or an ensemble (first member's history), their epochs, metrics and times too."""
    record = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    rows = [
        ("epochs run", len(record["history"])),
        ("best epoch", record["best_epoch"]),
        (f"best validation {record['metric']}", f"{record['best_metric']:.4f}"),
        ("stopped early", "yes" if record["stopped_early"] else "no"),
        ("training time (s)", f"{record['seconds']:.1f}"),
        ("time to reach the best epoch (s)", f"{record['seconds_to_best']:.1f}"),
    ]
    extra, metric = record.get("extra") or {}, record["metric"]
    if "refit_epochs" in extra:
        rows.append(("refit on train + validation (epochs, s)",
                     f"{extra['refit_epochs']}, {extra['refit_seconds']:.1f}"))
    if f"ensemble_val_{metric}" in extra:
        # What the ensemble's training reported: each row only where it was recorded.
        members = extra.get(f"member_val_{metric}") or []
        epochs = extra.get("member_best_epochs")
        rows += [("ensemble members", len(members) or None),
                 ("members' best epochs", ", ".join(map(str, epochs)) if epochs else None),
                 (f"members' best validation {metric}",
                  ", ".join(f"{v:.4f}" for v in members) if members else None),
                 (f"ensemble validation {metric}", f"{extra[f'ensemble_val_{metric}']:.4f}")]
        if "member_seconds" in extra:
            rows.append(("all members' training time (s)", f"{sum(extra['member_seconds']):.1f}"))
        rows = [(name, value) for name, value in rows if value is not None]
    return pd.DataFrame(rows, columns=["quantity", "value"]).set_index("quantity")


def training_record(result, models_dir: str | Path | None = None) -> dict:
    """What the run summary keeps of a `TrainingResult` (JSON-able), plus the model path."""
    record = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {**record, "epochs_run": len(record["history"]),
            "models_dir": str(models_dir) if models_dir is not None else None}


def evaluation_record(table: pd.DataFrame, fit_seconds: Mapping[str, float],
                      tuning: pd.DataFrame) -> dict:
    """What the run summary keeps of the evaluation: `{"models": {model: {metric: value}},
    "fit_seconds", "ease_l2", "baseline", "baseline_note"}` (JSON-able); with item-kNN in
    EASE's place, `ease_l2` is None and `knn_neighbours` holds the chosen count."""
    chosen = tuning.index[tuning["chosen"]] if "chosen" in tuning.columns else []
    value = float(chosen[0]) if len(chosen) else None
    baseline = tuning.attrs.get("baseline", "ease")
    record = {"models": {model: {k: float(v) for k, v in row.items()}
                         for model, row in table.to_dict(orient="index").items()},
              "fit_seconds": {k: float(v) for k, v in fit_seconds.items()},
              "ease_l2": value if baseline == "ease" else None,
              "baseline": baseline, "baseline_note": tuning.attrs.get("note")}
    if baseline == "item_knn":
        record["knn_neighbours"] = int(value) if value is not None else None
    return record
