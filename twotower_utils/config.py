"""Typed configuration: `config.json` merged with overrides, validated once.

`config.json` is the single source of truth for every parameter. Notebooks and the CLI pass
only overrides (papermill injects them), as a nested dict or with dotted keys
(`{"training.epochs": 3}`); `load_config` merges them over the file and validates the result,
refusing unknown keys, wrong types and out-of-range values with one message that names each
key path, the value given and what is allowed. Every command line (the pipeline's `-p`, the
data and distributed CLIs, the benchmarks' `--set`) reads its `KEY VALUE` pairs with
`parse_overrides` (each value by `parse_value`), the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower_utils.typed_config import ConfigError, build_dataclass, choice, number

FEATURE_TYPES = ("categorical", "numeric", "multi_hot")
SPLIT_METHODS = ("benchmark", "random", "temporal", "leave_last_out", "cold_items")
DATASETS = ("movielens-100k", "synthetic", "csv")
METRICS = ("precision", "recall", "ndcg", "map", "map_at_k", "hit_rate", "coverage")
DISTRIBUTION_STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
INDEXES = ("brute_force", "scann")


# The shipped ensemble's members 3 and 4 (members 1 and 2 train with the BCE default).
SOFTMAX_MEMBER = {"training.loss": "softmax", "training.logq_correction": True}


@dataclass(frozen=True)
class ModelConfig:
    """The towers and how they are compared."""

    embedding_dim: int = number(64, lo=1)
    hidden_layers: list[int] = field(default_factory=list)
    output_projection: bool = True
    dropout: float = number(0.1, lo=0.0, hi=1.0, hi_open=True)
    activation: str = choice("relu", "gelu", "elu", "selu", "tanh", "swish", default="relu")
    similarity: str = choice("dot", "cosine", default="dot")
    temperature: float = number(1.0, lo=0.0, lo_open=True)
    use_user_features: bool = True
    use_item_features: bool = True
    use_history: bool = True
    use_user_id: bool = False
    history_dropout: float = number(0.3, lo=0.0, hi=1.0, hi_open=True)
    history_leave_one_out: bool = False
    l2_regularization: float = number(0.05, lo=0.0)
    # Members trained side by side in one model, each step giving each its own batch
    # (embeddings side by side: a score is the sum of the members' scores); member m
    # applies ensemble_member_overrides[m], if given (entries beyond ensemble_size are
    # unused, so ensemble_size alone can shrink it).
    ensemble_size: int = number(4, lo=1)
    ensemble_member_overrides: list[dict[str, Any]] = field(
        default_factory=lambda: [{}, {}] + [dict(SOFTMAX_MEMBER) for _ in range(2)])


# The tuning step's default trials: the levers that moved validation results on the
# datasets of benchmarks/README.md (L2, the loss mix, the embedding size, the learning rate).
DEFAULT_TRIALS = (
    {"model.l2_regularization": 0.02},
    {"model.l2_regularization": 0.1},
    {"model.ensemble_member_overrides": [{}, {}, {}, {}]},
    {"model.ensemble_member_overrides": [dict(SOFTMAX_MEMBER) for _ in range(4)]},
    {"model.embedding_dim": 32},
    {"model.embedding_dim": 128},
    {"training.learning_rate": 0.01},
)


@dataclass(frozen=True)
class TuneConfig:
    """The tuning step of `train_model` (see `twotower_utils.model.tuning`): trials of overrides
    early-stopped on validation within a time budget; the best one is trained on."""

    enabled: bool = False
    budget_seconds: float = number(600.0, lo=0.0, lo_open=True)
    trials: list[dict[str, Any]] = field(
        default_factory=lambda: copy.deepcopy(list(DEFAULT_TRIALS)))


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, schedule, early stopping and the loss."""

    batch_size: int = number(1024, lo=1)
    # Batches of whole users (users shuffled, each one's pairs together) rather than of
    # pairs drawn at random: each user's history is then pooled about once per epoch.
    batch_by_user: bool = False
    epochs: int = number(20, lo=1)
    learning_rate: float = number(0.02, lo=0.0, lo_open=True)
    learning_rate_decay_factor: float = number(0.5, lo=0.0, hi=1.0, lo_open=True)
    learning_rate_decay_steps: int = number(1000, lo=1)
    # When set, the decay period in epochs instead (that many epochs' steps), so the
    # schedule reads the same whatever the dataset's size and the batch size.
    learning_rate_decay_epochs: float | None = number(3.0, lo=0.0, lo_open=True)
    early_stopping_patience: int = number(3, lo=0)
    # An epoch counts as an improvement only when the metric beats the best so far by more
    # than this (absolute): gains below the epoch-to-epoch noise neither reset the patience
    # nor move the best epoch (Keras' `min_delta`).
    early_stopping_min_delta: float = number(0.0, lo=0.0)
    early_stopping_metric: str = choice("ndcg@10", "recall@10", "ndcg@20", "recall@20",
                                         default="ndcg@10")
    loss: str = choice("bce", "sampled_softmax", "softmax", default="bce")
    # Items shared by a batch in the sampled softmax; 0 = every item seen in training.
    softmax_negatives: int = number(0, lo=0)
    in_batch_negatives: bool = False
    logq_correction: bool = False
    # Label-0 rows (explicit negatives) drawn per positive from its user's training ones
    # into the BCE beside the sampled negatives (0 = off), and the weight of their terms.
    explicit_negatives: int = number(0, lo=0)
    explicit_negative_weight: float = number(1.0, lo=0.0)
    # After early stopping, train on train + validation too: a fresh model for the
    # early-stopped epoch count ("scratch"), or the early-stopped weights continued for
    # `refit_epochs` epochs at the constant `refit_learning_rate` ("early_stopped").
    refit_with_validation: bool = True
    refit_from: str = choice("scratch", "early_stopped", default="scratch")
    refit_epochs: int = number(2, lo=1)
    refit_learning_rate: float = number(0.005, lo=0.0, lo_open=True)
    seed: int = number(42, lo=0)
    # The tf.distribute strategy training runs under: train_model, the notebooks and
    # `python -m twotower_utils.model.distributed` (see docs/serving.md).
    distribution_strategy: str = choice(*DISTRIBUTION_STRATEGIES, default="default")
    tune: TuneConfig = field(default_factory=TuneConfig)


@dataclass(frozen=True)
class SplitConfig:
    """How interactions are divided into train, validation and test."""

    method: str = choice(*SPLIT_METHODS, default="benchmark")
    train_ratio: float = number(0.75, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    validation_ratio: float = number(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    seed: int = number(42, lo=0)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic dataset with planted taste clusters."""

    num_users: int = number(2000, lo=1)
    num_items: int = number(1000, lo=1)
    num_interactions: int = number(50000, lo=1)
    num_clusters: int = number(8, lo=1)
    popularity_exponent: float = number(1.0, lo=0.0)
    seed: int = number(0, lo=0)


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

    dataset: str = choice(*DATASETS, default="movielens-100k")
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
    missing_feature_rows: str = choice("drop", "keep", default="drop")
    # One row per (user, item) pair before the split (see rawdata.resolve_pairs): repeated
    # rows keep the latest/first one or are refused; a pair labelled 1 and 0 is resolved or
    # refused. Both are counted, logged and noted in stats.json.
    duplicates: str = choice("keep_latest", "keep_first", "error", default="keep_latest")
    conflicting_labels: str = choice("positive_wins", "latest_wins", "error",
                                      default="positive_wins")
    split: SplitConfig = field(default_factory=SplitConfig)
    num_negatives: int = number(16, lo=0)
    # Rows of negatives.parquet (inspection and pointwise checks only; training resamples).
    negatives_sample_size: int = number(100_000, lo=1)
    negative_sampling: str = choice("uniform", "popularity", default="uniform")
    popularity_alpha: float = number(0.75, lo=0.0)
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

    num_leaves: int | None = number(None, lo=0)
    num_leaves_to_search: int | None = number(None, lo=1)
    reorder: int = number(500, lo=0)


@dataclass(frozen=True)
class ServingConfig:
    """Online and batch recommendation: the index, list length and batch chunking."""

    index: str = choice(*INDEXES, default="brute_force")
    top_k: int = number(10, lo=1)
    batch_chunk_size: int = number(10_000, lo=1)
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

    def processed_dir(self, digest: str | None = None) -> Path:
        """`data/processed/<dataset>-<fingerprint>/`: the processed data these settings make
        (see `twotower_utils.data.fingerprint`; runs with equal data settings share it). Pass the
        `digest` of a fingerprint already computed to skip computing it again."""
        if digest is None:
            from twotower_utils.data.fingerprint import data_fingerprint

            digest = data_fingerprint(self).digest
        return self.path("processed_dir") / f"{self.data.dataset}-{digest}"

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
        if isinstance(value, dict) and isinstance(target.get(leaf), dict) and is_section(
            target[leaf]
        ):
            target[leaf] = deep_merge(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return merged


# Text that opens a mapping, a list or a quoted string is meant as data: when it parses as
# neither JSON nor YAML it is an error, not a string.
_DATA_OPENERS = ("{", "[", '"', "'")


def parse_value(text: str) -> Any:
    """One override value as typed on a command line (`-p KEY VALUE`, `--set KEY VALUE`).

    Takes the VALUE text; returns it read as JSON (so `1e-3` is a float), else as YAML
    (`[64, 32]`, `{epochs: 3}`, `true`, `null`), else the text itself (`temporal`,
    `rating >= 4`); a YAML result that is not JSON data (a date) stays the text too. Raises
    ValueError when text opening a mapping, a list or a quoted string parses as neither.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml  # only the command lines need it

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        if text.lstrip().startswith(_DATA_OPENERS):
            reason = getattr(error, "problem", None) or " ".join(str(error).split())
            raise ValueError(f"not valid JSON or YAML ({reason})") from None
        return text
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return text
    return value


def parse_overrides(pairs: Iterable[tuple[str, str]] | None) -> dict[str, Any]:
    """The `(key, value_text)` pairs of a command line as a dict of overrides.

    Takes the pairs in order (a later key wins) and returns `{key: parse_value(text)}`;
    raises `ConfigError` naming the key and its text when a value cannot be parsed.
    """
    overrides: dict[str, Any] = {}
    for key, text in pairs or []:
        try:
            overrides[str(key)] = parse_value(text)
        except ValueError as error:
            raise ConfigError(f"{key} = {text!r}: cannot parse the value, {error}") from None
    return overrides


def is_section(value: dict[str, Any]) -> bool:
    """True when `value` is a config section (merged key by key), False for a feature
    declaration such as `{"age": "numeric"}` (a leaf, replaced whole)."""
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
    config = build_dataclass(Config, raw, "", problems)
    if config is not None:
        from twotower_utils.config_checks import cross_checks, member_problems

        problems.extend(cross_checks(config))
        problems.extend(member_problems(config, known=problems))
        if not problems:
            from twotower_utils.config_checks import trial_problems

            problems.extend(trial_problems(config))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems), problems)
    return dataclasses.replace(config, root=Path(root).resolve())


# The settings of one ensemble member trained alone (`ensemble.member_config`).
# A member of an ensemble as a model of its own (no members and no tuning of its own).
SINGLE_MEMBER = {"model.ensemble_size": 1, "model.ensemble_member_overrides": [],
                 "training.tune.trials": []}
