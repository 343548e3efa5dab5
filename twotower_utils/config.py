"""Typed configuration: `config.json` merged with overrides, validated once.

`config.json` is the single source of truth for every parameter. Notebooks and the CLI pass
only overrides (papermill injects them), as a nested dict or with dotted keys
(`{"training.epochs": 3}`); `load_config` merges them over the file and validates the result,
refusing unknown keys, wrong types and out-of-range values with one message that names each
key path, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FEATURE_TYPES = ("categorical", "numeric", "multi_hot")
SPLIT_METHODS = ("benchmark", "random", "temporal", "leave_last_out", "cold_items")
DATASETS = ("movielens-100k", "synthetic", "csv")
METRICS = ("precision", "recall", "ndcg", "map", "map_at_k", "hit_rate", "coverage")
DISTRIBUTION_STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
INDEXES = ("brute_force", "scann")


class ConfigError(ValueError):
    """Raised when a configuration (file or overrides) is not valid; lists every problem
    (also as the list `problems`)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def _choice(*allowed: str, default: str) -> Any:
    return field(default=default, metadata={"choices": allowed})


def _number(default: float | int | None, lo=None, hi=None, lo_open=False, hi_open=False) -> Any:
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


# The shipped ensemble's members 3 and 4 (members 1 and 2 train with the BCE default).
SOFTMAX_MEMBER = {"training.loss": "softmax", "training.logq_correction": True}


@dataclass(frozen=True)
class ModelConfig:
    """The towers and how they are compared."""

    embedding_dim: int = _number(64, lo=1)
    hidden_layers: list[int] = field(default_factory=list)
    output_projection: bool = True
    dropout: float = _number(0.1, lo=0.0, hi=1.0, hi_open=True)
    activation: str = _choice("relu", "gelu", "elu", "selu", "tanh", "swish", default="relu")
    similarity: str = _choice("dot", "cosine", default="dot")
    temperature: float = _number(1.0, lo=0.0, lo_open=True)
    use_user_features: bool = True
    use_item_features: bool = True
    use_history: bool = True
    use_user_id: bool = False
    history_dropout: float = _number(0.3, lo=0.0, hi=1.0, hi_open=True)
    history_leave_one_out: bool = False
    l2_regularization: float = _number(0.05, lo=0.0)
    # Members trained side by side in one model, each step giving each its own batch
    # (embeddings side by side: a score is the sum of the members' scores); member m
    # applies ensemble_member_overrides[m], if given (entries beyond ensemble_size are
    # unused, so ensemble_size alone can shrink it).
    ensemble_size: int = _number(4, lo=1)
    ensemble_member_overrides: list[dict[str, Any]] = field(
        default_factory=lambda: [{}, {}] + [dict(SOFTMAX_MEMBER) for _ in range(2)])


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, schedule, early stopping and the loss."""

    batch_size: int = _number(1024, lo=1)
    # Batches of whole users (users shuffled, each one's pairs together) rather than of
    # pairs drawn at random: each user's history is then pooled about once per epoch.
    batch_by_user: bool = False
    epochs: int = _number(30, lo=1)
    learning_rate: float = _number(0.005, lo=0.0, lo_open=True)
    learning_rate_decay_factor: float = _number(0.9, lo=0.0, hi=1.0, lo_open=True)
    learning_rate_decay_steps: int = _number(1000, lo=1)
    early_stopping_patience: int = _number(5, lo=0)
    early_stopping_metric: str = _choice("ndcg@10", "recall@10", "ndcg@20", "recall@20",
                                         default="ndcg@10")
    loss: str = _choice("bce", "sampled_softmax", "softmax", default="bce")
    # Items shared by a batch in the sampled softmax; 0 = every item seen in training.
    softmax_negatives: int = _number(0, lo=0)
    in_batch_negatives: bool = False
    logq_correction: bool = False
    # Label-0 rows (explicit negatives) drawn per positive from its user's training ones
    # into the BCE beside the sampled negatives (0 = off), and the weight of their terms.
    explicit_negatives: int = _number(0, lo=0)
    explicit_negative_weight: float = _number(1.0, lo=0.0)
    # After early stopping, train afresh on train + validation for the best epoch count.
    refit_with_validation: bool = True
    seed: int = _number(42, lo=0)
    # tf.distribute strategy of `python -m twotower_utils.distributed` (see docs/serving.md).
    distribution_strategy: str = _choice(*DISTRIBUTION_STRATEGIES, default="default")


@dataclass(frozen=True)
class SplitConfig:
    """How interactions are divided into train, validation and test."""

    method: str = _choice(*SPLIT_METHODS, default="benchmark")
    train_ratio: float = _number(0.75, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    validation_ratio: float = _number(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    seed: int = _number(42, lo=0)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic dataset with planted taste clusters."""

    num_users: int = _number(2000, lo=1)
    num_items: int = _number(1000, lo=1)
    num_interactions: int = _number(50000, lo=1)
    num_clusters: int = _number(8, lo=1)
    popularity_exponent: float = _number(1.0, lo=0.0)
    seed: int = _number(0, lo=0)


@dataclass(frozen=True)
class UsersColumns:
    """Column names of `data.users_csv`."""

    user_id: str = "user_id"


@dataclass(frozen=True)
class ItemsColumns:
    """Column names of `data.items_csv`."""

    item_id: str = "item_id"


@dataclass(frozen=True)
class InteractionsColumns:
    """Column names of `data.interactions_csv`; null = the file has no such column (rating
    and timestamp are optional; the label column is read only with `data.label = "column"`)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    label: str | None = "label"
    rating: str | None = "rating"
    timestamp: str | None = "timestamp"


@dataclass(frozen=True)
class ColumnsConfig:
    """Which column of each CSV file holds the ids, label, rating and timestamp, so raw files
    (`userId,movieId,rating,timestamp`) are read as they are instead of being renamed."""

    users: UsersColumns = field(default_factory=UsersColumns)
    items: ItemsColumns = field(default_factory=ItemsColumns)
    interactions: InteractionsColumns = field(default_factory=InteractionsColumns)


_LABEL_THRESHOLD = re.compile(r"\s*rating\s*(>=|>)\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*")


def parse_label(text: str) -> tuple[str, str | None, float | None]:
    """Read `data.label`: returns `(mode, operator, threshold)`.

    `"column"` and `"all_positive"` give `(text, None, None)`; a threshold on the rating
    column such as `"rating >= 4"` or `"rating > 3.5"` gives `("rating", ">=", 4.0)`.
    Raises `ConfigError` naming the key, the value and the accepted forms.
    """
    if text in ("column", "all_positive"):
        return text, None, None
    match = _LABEL_THRESHOLD.fullmatch(str(text))
    if not match:
        raise ConfigError(
            f"data.label = {text!r}: expected 'column' (the label column, 0 or 1), "
            "'all_positive' (every row is an interaction) or a threshold on the rating "
            "column such as 'rating >= 4' or 'rating > 3.5'"
        )
    return "rating", match.group(1), float(match.group(2))


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, its declared features, the split and the negatives.

    `user_features`/`item_features` map a column to its type; `null` means the dataset's own
    declaration (MovieLens-100K and synthetic know theirs; CSV datasets then use ids only).
    """

    dataset: str = _choice(*DATASETS, default="movielens-100k")
    ml100k_dir: str | None = None
    # users_csv/items_csv may be null for a csv dataset: the ids then come from the
    # interactions and that side has no features.
    users_csv: str | None = None
    items_csv: str | None = None
    interactions_csv: str | None = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # "column" | "all_positive" | "rating >= t" (see parse_label); rows below a rating
    # threshold become explicit negatives (label 0).
    label: str = "column"
    # Cells of feature columns that mean "unknown" (e.g. "(no genres listed)"); read as empty.
    missing_values: list[str] = field(default_factory=list)
    user_features: dict[str, str] | None = None
    item_features: dict[str, str] | None = None
    missing_feature_rows: str = _choice("drop", "keep", default="drop")
    # One row per (user, item) pair before the split (see rawdata.resolve_pairs): repeated
    # rows keep the latest/first one or are refused; a pair labelled 1 and 0 is resolved or
    # refused. Both are counted, logged and noted in stats.json.
    duplicates: str = _choice("keep_latest", "keep_first", "error", default="keep_latest")
    conflicting_labels: str = _choice("positive_wins", "latest_wins", "error",
                                      default="positive_wins")
    split: SplitConfig = field(default_factory=SplitConfig)
    num_negatives: int = _number(16, lo=0)
    # Rows of negatives.parquet (inspection and pointwise checks only; training resamples).
    negatives_sample_size: int = _number(100_000, lo=1)
    negative_sampling: str = _choice("uniform", "popularity", default="uniform")
    popularity_alpha: float = _number(0.75, lo=0.0)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class EvaluationConfig:
    """Which ranking metrics at which cut-offs."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    k_values: list[int] = field(default_factory=lambda: [5, 10, 20])
    exclude_train_items: bool = True


@dataclass(frozen=True)
class PathsConfig:
    """Output locations; relative paths are taken from the directory holding config.json."""

    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    models_dir: str = "models"
    reports_dir: str = "reports"
    logs_dir: str = "logs"


@dataclass(frozen=True)
class ScannConfig:
    """ScaNN index settings; null leaves are sized from the catalogue at build time."""

    num_leaves: int | None = _number(None, lo=0)
    num_leaves_to_search: int | None = _number(None, lo=1)
    reorder: int = _number(500, lo=0)


@dataclass(frozen=True)
class ServingConfig:
    """Online and batch recommendation: the index, list length and batch chunking."""

    index: str = _choice(*INDEXES, default="brute_force")
    top_k: int = _number(10, lo=1)
    batch_chunk_size: int = _number(10_000, lo=1)
    scann: ScannConfig = field(default_factory=ScannConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration. `root` anchors the relative paths (not part of the file)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    root: Path = field(default=Path("."), compare=False, metadata={"internal": True})

    def path(self, name: str) -> Path:
        """Absolute path of `paths.<name>` (e.g. "processed_dir"), resolved against `root`."""
        value = Path(getattr(self.paths, name))
        return value if value.is_absolute() else (self.root / value).resolve()

    def processed_dir(self) -> Path:
        """`data/processed/<dataset>-<fingerprint>/`: the processed data these settings make
        (see `twotower_utils.fingerprint`; runs with equal data settings share it)."""
        from twotower_utils.fingerprint import data_fingerprint

        return self.path("processed_dir") / f"{self.data.dataset}-{data_fingerprint(self).digest}"

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data, in the shape of config.json."""
        out = dataclasses.asdict(self)
        out.pop("root")
        return out

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A new, validated Config with `overrides` (nested or dotted keys) merged in."""
        return config_from_dict(deep_merge(self.to_dict(), overrides), root=self.root)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Return `base` with `overrides` merged in; dotted keys ("a.b") address nested sections.

    Dicts merge recursively except for feature declarations and other leaf dicts, which the
    override replaces whole (a dict given for a leaf replaces it).
    """
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        target = merged
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict) and _is_section(
            target[leaf]
        ):
            target[leaf] = deep_merge(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return merged


def _is_section(value: dict[str, Any]) -> bool:
    # Feature declarations are dicts of strings; sections hold at least one non-type value
    # or are known names. A section is merged key by key, a declaration is replaced whole.
    return not value or not all(v in FEATURE_TYPES for v in value.values())


def load_config(
    path: str | Path = "config.json", overrides: dict[str, Any] | None = None
) -> Config:
    """Read `path`, merge `overrides` (nested or dotted keys) over it and validate once.

    Returns a frozen `Config`; raises `ConfigError` naming every bad key path, its value and
    what is allowed, or `FileNotFoundError`/`ConfigError` for a missing or unparsable file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (expected a JSON file)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return config_from_dict(deep_merge(raw, overrides), root=path.resolve().parent)


def config_from_dict(raw: dict[str, Any], root: Path | str = ".") -> Config:
    """Build and validate a `Config` from plain data (missing keys take their defaults)."""
    problems: list[str] = []
    config = _build(Config, raw, "", problems)
    if config is not None:
        problems.extend(_cross_checks(config))
        problems.extend(_member_problems(config, known=problems))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems), problems)
    return dataclasses.replace(config, root=Path(root).resolve())


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "<top level>"
        problems.append(f"{where} = {raw!r}: expected an object (JSON dict)")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in fields:
            problems.append(
                f"{prefix}{key}: unknown key; allowed keys: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, spec in fields.items():
        if name not in raw:
            continue
        key_path = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name], key_path + ".", problems)
            continue
        value = raw[name]
        error = _type_error(value, hint) or _constraint_error(value, spec)
        if error:
            problems.append(f"{key_path} = {value!r}: {error}")
        else:
            kwargs[name] = float(value) if hint is float else value
    kwargs = {k: v for k, v in kwargs.items() if v is not None or _optional(hints[k])}
    return cls(**kwargs)


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _type_error(value: Any, hint: Any) -> str | None:
    if _optional(hint):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list) or any(_type_error(v, inner) for v in value):
            return f"expected a list of {inner.__name__}"
        return None
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict) or any(
            _type_error(k, key_t) or _type_error(v, val_t) for k, v in value.items()
        ):
            return (f"expected an object mapping {key_t.__name__} to "
                    f"{getattr(val_t, '__name__', 'values')}")
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "expected an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return "expected a finite number (NaN and infinity are never valid here)"
        return None if ok else "expected a number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    return None


def _constraint_error(value: Any, spec: dataclasses.Field) -> str | None:
    if value is None:
        return None
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        return f"expected one of {', '.join(map(repr, choices))}"
    bounds = spec.metadata.get("range")
    if bounds:
        lo, hi, lo_open, hi_open = bounds
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            return f"expected a value in {_interval(lo, hi, lo_open, hi_open)}"
    return None


def _interval(lo, hi, lo_open, hi_open) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return f"{left}{lo_s}, {hi_s}{right}"


# What an ensemble member may change: its loss, negatives and regularisation. The members
# train in one step (one optimizer, one batch size, one schedule, one early stopping) in
# towers of one shape, so everything else is shared.
MEMBER_OVERRIDABLE = ("training.loss", "training.softmax_negatives",
                      "training.in_batch_negatives", "training.logq_correction",
                      "training.explicit_negatives", "training.explicit_negative_weight",
                      "data.num_negatives", "data.negative_sampling", "data.popularity_alpha",
                      "model.l2_regularization", "model.dropout", "model.history_dropout",
                      "model.history_leave_one_out", "model.temperature")


SINGLE_MEMBER = {"model.ensemble_size": 1, "model.ensemble_member_overrides": []}


def _member_problems(config: Config, known: list[str]) -> list[str]:
    """Problems of each member's configuration that the shared one does not already have
    (`known`), so a bad shared key is reported once, not once per member."""
    model = config.model
    problems = []
    for index, overrides in enumerate(model.ensemble_member_overrides):
        where = f"model.ensemble_member_overrides[{index}]"
        flat = _flatten(overrides)
        bad = sorted(key for key in flat
                     if key in ("training.seed", "training.refit_with_validation")
                     or not key.startswith(MEMBER_OVERRIDABLE))
        if bad:
            problems.append(f"{where}: {', '.join(bad)} cannot differ between members; "
                            f"allowed: {', '.join(MEMBER_OVERRIDABLE)}")
            continue
        try:
            config.with_overrides({**flat, **SINGLE_MEMBER})
        except ConfigError as error:
            own = [line for line in error.problems if line not in known]
            if own:
                problems.append(f"{where}: {'; '.join(own)}")
    return problems


def _flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and _is_section(value):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cross_checks(config: Config) -> list[str]:
    """Checks that involve more than one key."""
    problems = []
    model, data, evaluation = config.model, config.data, config.evaluation
    if any(size < 1 for size in model.hidden_layers):
        problems.append(
            f"model.hidden_layers = {model.hidden_layers!r}: every layer size must be >= 1"
        )
    if not model.hidden_layers and not model.output_projection:
        problems.append(
            "model.hidden_layers = []: with model.output_projection = false the towers would "
            "have no layer mapping features to the embedding; give at least one hidden layer "
            "or set model.output_projection to true"
        )
    if not model.output_projection and model.hidden_layers and (
        model.hidden_layers[-1] != model.embedding_dim
    ):
        problems.append(
            f"model.hidden_layers = {model.hidden_layers!r}: without an output projection the "
            f"last hidden layer is the embedding, so it must equal model.embedding_dim "
            f"({model.embedding_dim})"
        )
    for name, declared in (("user_features", data.user_features),
                           ("item_features", data.item_features)):
        for column, kind in (declared or {}).items():
            if kind not in FEATURE_TYPES:
                problems.append(
                    f"data.{name}.{column} = {kind!r}: expected one of "
                    f"{', '.join(map(repr, FEATURE_TYPES))}"
                )
    if data.dataset == "csv":
        if data.interactions_csv is None:
            problems.append("data.interactions_csv = None: required when data.dataset is 'csv'")
        for side in ("user", "item"):
            declared = getattr(data, f"{side}_features")
            if getattr(data, f"{side}s_csv") is None and declared:
                problems.append(
                    f"data.{side}_features = {declared!r}: data.{side}s_csv is null, so "
                    f"{side}s have no feature table; set data.{side}s_csv or set "
                    f"data.{side}_features to null"
                )
    problems.extend(_label_problems(data))
    if data.split.method == "benchmark" and data.split.train_ratio != 0.75:
        problems.append(
            f"data.split.train_ratio = {data.split.train_ratio!r}: the benchmark split is fixed "
            "at 0.75; use data.split.method = 'random' (per user) for another ratio"
        )
    bad_metrics = [m for m in evaluation.metrics if m not in METRICS]
    if bad_metrics or not evaluation.metrics:
        problems.append(
            f"evaluation.metrics = {evaluation.metrics!r}: expected a non-empty list drawn "
            f"from {', '.join(METRICS)}"
        )
    if not evaluation.k_values or any(k < 1 for k in evaluation.k_values):
        problems.append(
            f"evaluation.k_values = {evaluation.k_values!r}: expected a non-empty list of "
            "integers >= 1"
        )
    training = config.training
    sampled = training.loss in ("bce", "sampled_softmax")
    if training.loss == "bce" and data.num_negatives == 0 and not training.in_batch_negatives:
        problems.append(
            f"data.num_negatives = 0: the {training.loss!r} loss needs negatives; set "
            "num_negatives >= 1 or training.in_batch_negatives = true"
        )
    if (training.logq_correction and sampled and data.negative_sampling == "uniform"
            and not training.in_batch_negatives):
        # Uniform negatives have equal sampling probability: there is nothing to correct.
        # (In-batch negatives arrive with their training frequency, which is corrected.)
        problems.append(
            f"training.logq_correction = True: with the {training.loss!r} loss and no "
            "in-batch negatives, logQ correction needs data.negative_sampling = 'popularity'"
        )
    return problems


def _label_problems(data: DataConfig) -> list[str]:
    """`data.label` must parse and name a column the mapping keeps."""
    try:
        mode, _, _ = parse_label(data.label)
    except ConfigError as error:
        return [str(error)]
    role = {"column": "label", "rating": "rating"}.get(mode)
    if role and getattr(data.columns.interactions, role) is None:
        return [f"data.label = {data.label!r} reads the {role} column, but "
                f"data.columns.interactions.{role} is null; name the column or set "
                "data.label to 'all_positive'"]
    return []
