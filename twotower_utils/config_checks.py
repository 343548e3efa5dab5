"""Checks of a whole configuration that no single field can make on its own.

`cross_checks` relates keys to each other (tower shapes, feature types, the csv files a
dataset needs, the label mode, the losses and their negatives); `member_problems` validates
each ensemble member's overrides, reporting only what the shared configuration does not
already get wrong; `trial_problems` validates the tuning step's trials (`training.tune`).
`config.config_from_dict` runs them after building the sections.
"""

from __future__ import annotations

from typing import Any

from twotower_utils.config import (
    FEATURE_TYPES,
    METRICS,
    SINGLE_MEMBER,
    Config,
    DataConfig,
    is_section,
    parse_label,
)
from twotower_utils.typed_config import ConfigError

__all__ = ["MEMBER_OVERRIDABLE", "TRIAL_OVERRIDABLE", "cross_checks", "flatten_overrides",
           "label_problems", "member_problems", "trial_config", "trial_problems"]


# What an ensemble member may change: its loss, negatives and regularisation. The members
# train in one step (one optimizer, one batch size, one schedule, one early stopping) in
# towers of one shape, so everything else is shared.
MEMBER_OVERRIDABLE = ("training.loss", "training.softmax_negatives",
                      "training.in_batch_negatives", "training.logq_correction",
                      "training.explicit_negatives", "training.explicit_negative_weight",
                      "data.num_negatives", "data.negative_sampling", "data.popularity_alpha",
                      "model.l2_regularization", "model.dropout", "model.history_dropout",
                      "model.history_leave_one_out", "model.temperature")


def member_problems(config: Config, known: list[str]) -> list[str]:
    """Problems of each member's configuration that the shared one does not already have
    (`known`), so a bad shared key is reported once, not once per member."""
    model = config.model
    problems = []
    for index, overrides in enumerate(model.ensemble_member_overrides):
        where = f"model.ensemble_member_overrides[{index}]"
        flat = flatten_overrides(overrides)
        bad = sorted(key for key in flat
                     if key in ("training.seed",) or key.startswith("training.refit")
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


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Overrides with dotted keys: nested sections are unfolded (`{"model": {"a": 1}}` ->
    `{"model.a": 1}`), leaf dicts such as feature declarations are kept whole."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and is_section(value):
            out.update(flatten_overrides(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def cross_checks(config: Config) -> list[str]:
    """Problems that involve more than one key of `config`, one line each."""
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
    problems.extend(label_problems(data))
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


def label_problems(data: DataConfig) -> list[str]:
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


# Prefixes of the keys a trial may override.
TRIAL_OVERRIDABLE = ("model.", "training.")
# Keys under TRIAL_OVERRIDABLE that must stay as configured.
TRIAL_FIXED = ("training.tune", "training.seed", "training.refit_with_validation",
               "training.refit_from", "training.refit_epochs", "training.refit_learning_rate",
               "training.distribution_strategy", "training.early_stopping_metric",
               "model.use_user_features", "model.use_item_features")


def trial_problems(config: Config) -> list[str]:
    """Problems of `training.tune.trials`: keys a trial may not change, and values the
    configuration would refuse (each named `training.tune.trials[i]`)."""
    problems = []
    for index, trial in enumerate(config.training.tune.trials):
        where = f"training.tune.trials[{index}]"
        flat = flatten_overrides(trial)
        bad = sorted(key for key in flat if not key.startswith(TRIAL_OVERRIDABLE)
                     or key.startswith(TRIAL_FIXED))
        if bad:
            problems.append(f"{where}: {', '.join(bad)} cannot be tuned (a trial may change "
                            f"keys under {', '.join(TRIAL_OVERRIDABLE)}, except "
                            f"{', '.join(TRIAL_FIXED)})")
            continue
        try:
            trial_config(config, trial)
        except ConfigError as error:
            problems.append(f"{where}: {'; '.join(error.problems)}")
    return problems


def trial_config(config: Config, trial: dict[str, Any]) -> Config:
    """`config` with one trial's overrides applied (and no tuning of its own)."""
    return config.with_overrides({**flatten_overrides(trial), "training.tune.enabled": False,
                                  "training.tune.trials": []})
