"""How `TwoTowerRecallSystem.train_model` trains: early stopping, then one refit.

`train_and_refit` early-stops one model on validation and, with
`training.refit_with_validation`, trains it on train + validation too (`refit`): whatever
`model.ensemble_size` is, one early-stopping run and one refit. An ensemble is one model
whose K members train side by side in every step, each on its own batch order with its own
negatives, dropout and overrides (see `ensemble` and `training.Trainer`); each member is
early-stopped on its own validation score and keeps its best epoch's weights.

The refit (`training.refit_from`) either trains a fresh model for the early-stopped epoch
count, taking member m's weights at its own (`ensemble.MemberStopping`) ("scratch", the
default), or continues the early-stopped model on train + validation for
`training.refit_epochs` epochs at the constant `training.refit_learning_rate`
("early_stopped"). Continuing costs two epochs instead of a second training; judged on
validation (benchmarks/README.md, with a holdout carved out of the training split standing
in for validation, three holdouts per shape) it is below the fresh refit on both
MovieLens-100K splits and on a long-tail 9K-item catalogue, hence not the default.
`ensemble_summary` adds each member's own validation metric. `join_members` writes trained
single-member models into one K-member model (members trained elsewhere can be joined).

Both trainings run under `system.strategy` (`training.distribution_strategy`; see
`distributed`): the refit's model is built in its scope, and under any strategy but the
default the final model handed back is an undistributed copy of the trained one (`plain_copy`),
so evaluating, serving and saving it are no collectives and the chief can do them alone.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import tensorflow as tf

from twotower_utils.config import Config
from twotower_utils.evaluation.protocol import EvaluationProtocol, evaluation_protocol
from twotower_utils.model.distributed import is_default
from twotower_utils.model.ensemble import MEMBER_SEED_STRIDE, member_config
from twotower_utils.model.training import Trainer
from twotower_utils.model.two_tower import TwoTowerModel, build_model
from twotower_utils.model.validation import member_metrics

__all__ = ["MEMBER_SEED_STRIDE", "early_stop", "ensemble_summary", "join_members",
           "member_config", "plain_copy", "refit", "refit_data", "train_and_refit",
           "validation_candidates", "validation_protocol"]

logger = logging.getLogger(__name__)


def early_stop(system, model, config: Config, name: str, resume: bool, callbacks=()):
    """Train `model` (built in `system.strategy`'s scope) on the training split with early
    stopping on validation, checkpointing to `models/.checkpoints/<name>/`; returns the
    `TrainingResult` (the model keeps its best weights, each member its own)."""
    data, protocol = system.data, validation_protocol(system)
    trainer = Trainer(
        model, config, data.train["user_idx"].to_numpy(),
        data.train["item_idx"].to_numpy(), protocol.relevant, protocol.exclude,
        checkpoint_dir=config.path("models_dir") / ".checkpoints" / name,
        candidates=protocol.candidates, log_dir=config.path("logs_dir") / name,
        strategy=system.strategy)
    return trainer.fit(resume=resume, callbacks=callbacks)


def train_and_refit(system, model, config: Config, name: str, resume: bool, callbacks=(),
                    result=None):
    """Early-stop `model` on validation (unless `result` says it already was), then refit
    if configured.

    Returns `(result, early-stopped model, final model)`; the final model is the refit on
    train + validation (`refit`, as `training.refit_from` says) when
    `training.refit_with_validation` is set, and under a strategy other than the default an
    undistributed copy (`plain_copy`).
    """
    if result is None:
        result = early_stop(system, model, config, name, resume, callbacks)
    if not (config.training.refit_with_validation and result.best_epoch):
        return result, model, plain_copy(model, system.data, config, system.strategy)
    train = config.training
    continuing = train.refit_from == "early_stopped"
    epochs = train.refit_epochs if continuing else result.best_epoch
    refitted, seconds = refit(system, config, epochs, name, resume,
                              None if continuing else result.extra.get("member_best_epochs"),
                              start=model if continuing else None)
    result.extra.update(refit_epochs=epochs, refit_seconds=seconds,
                        refit_from=train.refit_from)
    return result, model, plain_copy(refitted, refit_data(system), config, system.strategy)


def plain_copy(model: TwoTowerModel, data, config: Config,
               strategy: tf.distribute.Strategy) -> TwoTowerModel:
    """`model` itself under the default strategy; else a model built outside every scope
    for `data` and `config` (those `model` was built with) holding `model`'s weights.

    Call it on every worker: reading the weights reads BatchNorm's sync-on-read statistics,
    a collective."""
    if is_default(strategy):
        return model
    weights = model.get_weights()
    plain = build_model(data, config)
    plain.set_weights(weights)
    return plain


def refit_data(system):
    """`system.data` with train + validation as the training split and the serving history
    (everything before the test split) as the history: what `refit` trains on."""
    data = system.data
    both = pd.concat([data.train, data.validation], ignore_index=True)
    return replace(data, train=both, validation=data.validation.iloc[:0],
                   history=system._serving_history)


def refit(system, config: Config, epochs: int, name: str, resume: bool,
          member_epochs: list[int] | None = None, start: TwoTowerModel | None = None):
    """A model (built in `system.strategy`'s scope) trained on `refit_data` for `epochs`,
    checkpointing to `models/.checkpoints/<name>-refit/`; returns it and the seconds the
    training took.

    From `start`'s weights (an early-stopped model) at the constant
    `training.refit_learning_rate` when `start` is given; else a fresh model on the
    configured schedule, an ensemble's member m taken at `member_epochs[m]`.
    """
    data = refit_data(system)
    both = data.train
    schedule = {"epochs": epochs}
    if start is not None:
        schedule.update(learning_rate=config.training.refit_learning_rate,
                        learning_rate_decay_factor=1.0)
        member_epochs = None  # every member continues for `epochs`
    config = replace(config, training=replace(config.training, **schedule))
    logger.info(f"refitting on train + validation ({len(both):,} pairs) for {epochs} epochs"
                + (" from the early-stopped weights at learning rate "
                   f"{config.training.learning_rate:g}" if start is not None else ""))
    with system.strategy.scope():
        model = build_model(data, config)
        if start is not None:
            # Same data shapes and configuration: the variables match one for one (the
            # sampler and history tables are train + validation's, built above). Reading
            # `start`'s weights is a collective under a strategy: every worker gets here.
            model.set_weights(start.get_weights())
    trainer = Trainer(
        model, config, both["user_idx"].to_numpy(), both["item_idx"].to_numpy(), None,
        system._serving_history,
        checkpoint_dir=config.path("models_dir") / ".checkpoints" / f"{name}-refit",
        log_dir=config.path("logs_dir") / name / "refit",
        member_epochs=member_epochs, strategy=system.strategy)
    return model, trainer.fit(resume=resume).seconds


def validation_protocol(system) -> EvaluationProtocol:
    """The validation split's `evaluation_protocol` for `system`'s data and split method:
    for the cold-items split (whose validation items are unseen in training too) the
    validation items are ranked among themselves, as the cold-item evaluation ranks among
    the cold test items; otherwise among the items seen in training."""
    return evaluation_protocol(system.data, "validation",
                               cold_items=system.config.data.split.method == "cold_items")


def validation_candidates(system) -> np.ndarray:
    """Bool `[num_items]` of the items ranked on validation (`validation_protocol`'s)."""
    return validation_protocol(system).candidates


def ensemble_summary(system, result, model) -> dict:
    """Each member's validation metric in the early-stopped ensemble `model` (its slice of
    the embeddings alone) beside the ensemble's own (`result.best_metric`)."""
    protocol, metric = validation_protocol(system), result.metric
    values = list(member_metrics(model, protocol.exclude, protocol.relevant,
                                 protocol.candidates, metric).values())
    logger.info(f"ensemble of {model.members}: validation {metric} {result.best_metric:.4f} "
                "(members alone " + ", ".join(f"{v:.4f}" for v in values) + ")")
    return {f"member_val_{metric}": values, f"ensemble_val_{metric}": result.best_metric}


def join_members(members: list[TwoTowerModel], data, config: Config) -> TwoTowerModel:
    """One model whose towers hold the trained single-member `members` side by side.

    Returns a `TwoTowerModel` with `ensemble_size = len(members)` built for `data`: its wide
    tables are the members' tables concatenated (member m is slice m) and member m's layers
    carry member m's weights, so its embeddings are the members' embeddings concatenated.
    """
    joined = build_model(data, replace(config, model=replace(config.model,
                                                             ensemble_size=len(members))))
    for side in ("user_tower", "item_tower"):
        target, sources = getattr(joined, side), [getattr(m, side) for m in members]
        if any(source.members != 1 for source in sources):
            raise ValueError("join_members: every member must be a single-member model")
        wide = [(target.id_embedding, [s.id_embedding for s in sources]),
                (target.history_embedding, [s.history_embedding for s in sources])]
        wide += [(layer, [s.feature_embeddings[name] for s in sources])
                 for name, layer in target.feature_embeddings.items()]
        for layer, parts in wide:
            if layer is not None:
                layer.embeddings.assign(tf.concat([p.embeddings for p in parts], axis=1))
        for (hidden, projection), source in zip(target.member_layers, sources):
            source_hidden, source_projection = source.member_layers[0]
            for layers, source_layers in zip(hidden, source_hidden):
                for layer, source_layer in zip(layers, source_layers):
                    layer.set_weights(source_layer.get_weights())
            if projection is not None:
                projection.set_weights(source_projection.get_weights())
    return joined
