"""Fitting a `TwoTowerModel`: Adam with exponential decay, early stopping, checkpoints, logs.

Each epoch shuffles the training pairs with a generator seeded by (seed, epoch) (with an
ensemble, each member m by (seed + 1000 m, epoch): its own batch order), runs one compiled
step per batch (one step trains every member, each on its own batch), then scores the
validation split over the full catalogue with the numpy top-k of `twotower_utils.evaluation.metrics`
(fast and exact, unlike streaming FactorizedTopK). After every epoch a checkpoint holds the
model (towers, BatchNorm statistics, the negative sampler's and the dropout layers' generator
states), the optimizer, the epoch counter and the early-stopping state, and the best epoch's
weights are kept beside it (an ensemble's members are early-stopped one by one, each keeping
its own best epoch, and a member that has stopped leaves the step, so the others go on
without paying for it: `ensemble.MemberStopping`). A run killed mid-way and restarted with
`resume=True` therefore continues exactly where it stopped and ends with the same weights as
an uninterrupted run; a checkpoint made with other settings is refused
(`twotower_utils.model.resume`). The best weights are restored at the end. The negatives come
from `twotower_utils.model.sampler`.

The same loop trains under any `tf.distribute.Strategy` (`strategy=`; default: the one in
effect, i.e. no distribution): the model is built in `strategy.scope()` by the caller and the
Trainer makes the optimizer, its slots and the checkpoint in the same scope. Each step splits
every member's batch evenly over the replicas (a last batch smaller than the replica count is
dropped), runs `TwoTowerModel.train_step` on each with the loss scaled by 1/replicas, so the
summed update is the mean over the global batch, and averages the replicas' losses. Every
worker of a multi-worker run validates and checkpoints (both are collectives); a worker other
than the chief checkpoints to its own directory (`distributed.worker_directory`) and writes no
TensorBoard logs. Under the default strategy the step is the single-device step it always was.

Progress is one INFO line per epoch on this module's logger (no per-step output; shown by
`twotower_utils.logs.configure_logging`, as the notebooks and CLIs do), readable in a terminal
and in a papermill-executed notebook; the same numbers go to TensorBoard when a log directory
is given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from twotower_utils.config import Config
from twotower_utils.evaluation.protocol import seen_items
from twotower_utils.io import write_json
from twotower_utils.model.distributed import is_default, worker_directory
from twotower_utils.model.ensemble import MEMBER_SEED_STRIDE, MemberStopping
from twotower_utils.model.resume import ResumeError, check_resumable, training_settings
from twotower_utils.model.validation import evaluate_ranking, member_metrics, validation_vectors

__all__ = ["ResumeError", "Trainer", "TrainingResult", "check_resumable",
           "make_optimizer", "replicated_generator_states", "training_settings"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a `Trainer.fit` call did.

    `history` holds one dict per epoch (epoch, loss, validation metrics, learning rate,
    seconds); `seconds_to_best` is the cumulative training + validation time up to the end
    of the best epoch (summed over resumed runs); `resumed_from` is the epoch a resumed run
    started after (0 for a fresh run).
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    metric: str
    seconds: float
    seconds_to_best: float
    stopped_early: bool
    resumed_from: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def make_optimizer(config: Config, num_pairs: int | None = None
                   ) -> tf.keras.optimizers.Optimizer:
    """Adam with the configured exponential learning-rate decay (smooth, not staircase):
    by `training.learning_rate_decay_factor` every `learning_rate_decay_epochs` epochs (of
    `num_pairs` training pairs in batches of `training.batch_size`) when both are set, else
    every `learning_rate_decay_steps` steps."""
    train = config.training
    decay_steps = train.learning_rate_decay_steps
    if train.learning_rate_decay_epochs is not None and num_pairs:
        steps_per_epoch = -(-int(num_pairs) // train.batch_size)
        decay_steps = train.learning_rate_decay_epochs * steps_per_epoch
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(
        train.learning_rate, decay_steps, train.learning_rate_decay_factor)
    # The legacy (fused-kernel) Adam costs a fraction of the new one per step on CPU.
    return tf.keras.optimizers.legacy.Adam(learning_rate=schedule)


def replicated_generator_states(model) -> list[tf.Variable]:
    """The state variables, each once, of the `tf.random.Generator`s the model draws with
    (its samplers' and its dropout layers', each kept as a `generator` attribute) that have
    more than one local replica (none under the default strategy)."""
    found = {}
    for module in [*getattr(model, "samplers", ()), *model.submodules]:
        generator = getattr(module, "generator", None)
        if isinstance(generator, tf.random.Generator):
            found[id(generator)] = generator.state
    return [state for state in found.values() if len(getattr(state, "values", ())) > 1]


class Trainer:
    """Trains a `TwoTowerModel` on index pairs with early stopping and checkpoints.

    Args:
        model: the `TwoTowerModel` to train (its training history must be `exclude`).
        config: the full `Config` (training section: batch size, epochs, schedule, patience,
            early-stopping metric, seed).
        train_users, train_items: int arrays of the training positives' indices.
        validation: csr `[num_users, num_items]` of validation positives (early stopping);
            None trains exactly `training.epochs` epochs with no validation (a refit), and
            the last epoch counts as the best.
        exclude: csr of the training positives (never recommended during validation): the
            validation protocol's `exclude` (`evaluation.protocol`).
        candidates: bool `[num_items]` of recommendable items (default: items in `exclude`,
            the protocol's rule; pass the protocol's `candidates` for a cold-items split).
        checkpoint_dir: where checkpoints, the best weights and the epoch log go (on a
            worker other than the chief, `distributed.worker_directory` of it).
        log_dir: TensorBoard directory (None: no TensorBoard logs; the chief's only).
        member_epochs: a refit's epoch count per ensemble member (`MemberStopping`).
        strategy: the `tf.distribute.Strategy` whose scope `model` was built in (None: the
            one in effect, by default no distribution).
    """

    def __init__(self, model, config: Config, train_users: np.ndarray,
                 train_items: np.ndarray, validation: sp.csr_matrix, exclude: sp.csr_matrix,
                 checkpoint_dir: str | Path, candidates: np.ndarray | None = None,
                 log_dir: str | Path | None = None,
                 member_epochs: Sequence[int] | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        self.model, self.config = model, config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self._undistributed = is_default(self.strategy)
        self.users = np.asarray(train_users, dtype=np.int32)
        self.items = np.asarray(train_items, dtype=np.int32)
        if self.users.shape != self.items.shape or self.users.ndim != 1 or not len(self.users):
            raise ValueError(f"train_users/train_items: expected two equal, non-empty 1-D "
                             f"arrays, got shapes {self.users.shape} and {self.items.shape}")
        self.validation = None if validation is None else sp.csr_matrix(validation)
        self.exclude = sp.csr_matrix(exclude)
        self.candidates = (seen_items(self.exclude) if candidates is None
                           else np.asarray(candidates, dtype=bool))
        self.metric = config.training.early_stopping_metric
        self.k_values = sorted({10, int(self.metric.split("@")[1])})
        self.checkpoint_dir = worker_directory(checkpoint_dir, self.strategy)
        chief = self.checkpoint_dir == Path(checkpoint_dir)
        self.log_dir = Path(log_dir) if log_dir is not None and chief else None
        with self.strategy.scope():
            self._build_optimizer(model, config)
        self.state = {
            "epoch": tf.Variable(0, dtype=tf.int64, trainable=False),
            "best_epoch": tf.Variable(0, dtype=tf.int64, trainable=False),
            "best_metric": tf.Variable(-np.inf, dtype=tf.float64, trainable=False),
            "wait": tf.Variable(0, dtype=tf.int64, trainable=False),
            "seconds": tf.Variable(0.0, dtype=tf.float64, trainable=False),
            "seconds_to_best": tf.Variable(0.0, dtype=tf.float64, trainable=False),
        }
        # One step trains every ensemble member, each on its own batch: row m of a
        # [members, B] batch (see `losses.compute_loss`).
        self.members = int(getattr(model, "members", 1))
        # Members converge at their own pace (an in-batch softmax member in half the epochs
        # of a BCE one): each is early-stopped on its own validation score and keeps its own
        # best epoch's weights; a refit takes member m's weights at `member_epochs[m]`.
        self.member_stopping = None
        if self.members > 1 and (self.validation is not None or member_epochs is not None):
            self.member_stopping = MemberStopping(
                model, self.checkpoint_dir / "members",
                None if self.validation is not None else list(member_epochs),
                patience=config.training.early_stopping_patience,
                min_delta=config.training.early_stopping_min_delta)
            self.state.update(self.member_stopping.state)
        with self.strategy.scope():
            self.checkpoint = tf.train.Checkpoint(model=model, optimizer=self.optimizer,
                                                  **self.state)
            self.manager = tf.train.CheckpointManager(self.checkpoint,
                                                      self.checkpoint_dir / "last", max_to_keep=1)
        self.best_prefix = str(self.checkpoint_dir / "best" / "weights")
        # [members, None] per replica: one trace for every batch size, the last one's too
        # (a plain TensorSpec under the default strategy, a PerReplicaSpec under others).
        spec = tf.type_spec_from_value(self._distribute(np.zeros((self.members, 0), np.int32)))
        spec = spec.most_specific_common_supertype([tf.type_spec_from_value(
            self._distribute(np.zeros((self.members, self.replicas), np.int32)))])
        self._replicated_states = replicated_generator_states(model)
        # The step has no Python control flow on tensors (members are a Python loop, the
        # rest explicit tf.cond / tf.while_loop), so autograph is off: tracing the shipped
        # ensemble's step takes about 3 s instead of 6.
        self._step = tf.function(self._train_step, autograph=False, input_signature=[
            spec, spec, tf.TensorSpec([self.members], tf.bool)])

    def _build_optimizer(self, model, config: Config) -> None:
        """The optimizer, compiled into `model`, with its slots (inside the strategy's scope,
        so they are mirrored like the model's variables)."""
        self.optimizer = make_optimizer(config, len(self.users))
        model.compile(optimizer=self.optimizer)
        # Slots must exist before a restore can fill them and before the step traces (legacy
        # Adam has no public build method).
        self.optimizer._create_all_weights(model.trainable_variables)

    def _distribute(self, batch: np.ndarray):
        """Replica r's even slice (along the batch axis) of a `[members, B]` batch, as the
        distributed value `strategy.run` hands out (the batch itself under the default
        strategy)."""
        if self._undistributed:
            return batch  # as before strategies: no per-step wrapping (about 20 us a call)
        parts = np.array_split(batch, self.replicas, axis=1)
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group]))

    def _replica_step(self, users: tf.Tensor, items: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
        return self.model.train_step({"user_idx": users, "item_idx": items}, active,
                                     loss_scale=1.0 / self.replicas)["loss"]

    def _train_step(self, users, items, active: tf.Tensor) -> tf.Tensor:
        losses = self.strategy.run(self._replica_step, args=(users, items, active))
        # The replicas draw different amounts from their generators (uneven slices, rounds of
        # rejection sampling), but a checkpoint keeps one replica's state, so a resumed run
        # would draw other numbers on the rest: every replica goes on from the state furthest
        # ahead (their keys differ by replica, so their streams still differ).
        for state in self._replicated_states:
            ends = tf.stack([component.read_value() for component in state.values])
            state.assign(tf.gather(ends, tf.argmax(ends[:, 0] - ends[0, 0])))
        return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    @property
    def history_path(self) -> Path:
        """The JSON log of finished epochs, kept in step with the checkpoint."""
        return self.checkpoint_dir / "history.json"

    @property
    def config_path(self) -> Path:
        """The training-relevant configuration the checkpoint was made with."""
        return self.checkpoint_dir / "config.json"

    def epoch_orders(self, epoch: int) -> list[np.ndarray]:
        """Each member's permutation of the training pairs for `epoch`, drawn with its own seed
        (`training.seed + 1000 * m`), grouped by user with `training.batch_by_user`."""
        train = self.config.training
        orders = []
        for member in range(self.members):
            rng = np.random.default_rng([train.seed + MEMBER_SEED_STRIDE * member, epoch])
            order = rng.permutation(len(self.users))
            if train.batch_by_user:
                # Users in a random order, each user's pairs together (in a random order):
                # a batch then holds few users, and the user tower pools each one's history
                # about once per epoch instead of once per batch it appears in.
                rank = rng.permutation(int(self.users.max()) + 1)
                order = order[np.argsort(rank[self.users[order]], kind="stable")]
            orders.append(order)
        return orders

    def fit(self, resume: bool = False,
            callbacks: Sequence[Callable[[int, dict], object]] = ()) -> TrainingResult:
        """Train until `training.epochs` or early stopping; restore the best weights.

        Args:
            resume: continue from the last checkpoint in `checkpoint_dir` (a fresh start
                when there is none); otherwise any previous checkpoints there are discarded.
            callbacks: called as `fn(epoch, record)` after each epoch is checkpointed.

        Returns:
            A `TrainingResult`.
        """
        train = self.config.training
        history: list[dict[str, float]] = []
        if resume and self.manager.latest_checkpoint:
            check_resumable(self.config_path, self.config)
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            done = int(self.state["epoch"].numpy())
            if self.history_path.is_file():
                history = [r for r in json.loads(self.history_path.read_text())
                           if r["epoch"] <= done]
            logger.info(f"resuming after epoch {done} (best {self.metric} "
                        f"{self.state['best_metric'].numpy():.4f} at epoch "
                        f"{int(self.state['best_epoch'].numpy())})")
        elif self.checkpoint_dir.exists():
            import shutil

            shutil.rmtree(self.checkpoint_dir)
        if not self.config_path.is_file():
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps(training_settings(self.config), indent=1))
        resumed_from = int(self.state["epoch"].numpy())
        writer = (tf.summary.create_file_writer(str(self.log_dir))
                  if self.log_dir is not None else None)
        started = time.perf_counter()
        stopped_early = self._patience_exhausted()
        epoch = resumed_from + 1
        while not stopped_early and epoch <= train.epochs:
            record = self._run_epoch(epoch)
            history.append(record)
            self._write_epoch(epoch, record, history, writer)
            for callback in callbacks:
                callback(epoch, record)
            stopped_early = self._patience_exhausted() and epoch < train.epochs
            epoch += 1
        best_epoch = int(self.state["best_epoch"].numpy())
        extra = {}
        if self.member_stopping is not None:
            self.member_stopping.assemble()
            member_epochs = self.member_stopping.state["member_best_epoch"].numpy()
            extra["member_best_epochs"] = [int(e) for e in member_epochs]
            if self.validation is not None:
                best_epoch = int(member_epochs.max())
                value = evaluate_ranking(self.model, self.exclude, self.validation,
                                         self.candidates, self.k_values)[self.metric]
                self.state["best_metric"].assign(value)
                logger.info(f"members' best epochs {extra['member_best_epochs']}: "
                            f"their {self.metric} " + ", ".join(
                                f"{v:.4f}" for v in
                                self.member_stopping.state["member_best_metric"].numpy()))
        elif best_epoch and self.validation is not None:  # without validation, the last is best
            tf.train.Checkpoint(model=self.model).read(self.best_prefix).expect_partial()
        if self.validation is None:
            logger.info(f"trained {best_epoch} epochs without validation "
                        f"({self.state['seconds'].numpy():.1f} s)")
        else:
            logger.info(f"best epoch {best_epoch}: {self.metric} "
                        f"{self.state['best_metric'].numpy():.4f} "
                        f"({self.state['seconds_to_best'].numpy():.1f} s of training to reach it)")
        return TrainingResult(
            history=history, best_epoch=best_epoch,
            best_metric=float(self.state["best_metric"].numpy()), metric=self.metric,
            seconds=time.perf_counter() - started,
            seconds_to_best=float(self.state["seconds_to_best"].numpy()),
            stopped_early=stopped_early, resumed_from=resumed_from, extra=extra)

    def _patience_exhausted(self) -> bool:
        # patience 0 stops after the first epoch without improvement, as Keras does.
        if self.member_stopping is not None and self.validation is not None:
            return self.member_stopping.exhausted()
        wait = int(self.state["wait"].numpy())
        return wait >= max(self.config.training.early_stopping_patience, 1)

    def _run_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled training pairs plus validation; returns the record."""
        train = self.config.training
        started = time.perf_counter()
        orders = np.stack(self.epoch_orders(epoch))
        users, items = self.users[orders], self.items[orders]
        # A member that has stopped (early stopping) or reached its refit epochs is left
        # out of the step: its kept weights are its snapshot (`MemberStopping`).
        active = (self.member_stopping.active(epoch) if self.member_stopping is not None
                  else np.ones(self.members, bool))
        losses, sizes = [], []
        for start in range(0, orders.shape[1], train.batch_size):
            stop = start + train.batch_size
            if users[0, start:stop].size < self.replicas:
                continue  # every replica needs a share of the batch
            losses.append(self._step(self._distribute(users[:, start:stop]),
                                     self._distribute(items[:, start:stop]), active))
            sizes.append(users[0, start:stop].size)
        # Per pair and per member trained in this epoch (members that stop do not make the
        # curve step down).
        loss = float(np.dot([float(v) for v in losses], sizes)
                     / (sum(sizes) * max(int(active.sum()), 1)))
        train_seconds = time.perf_counter() - started
        metrics = {}
        if self.validation is not None:
            # One embedding pass serves the ensemble's metrics and each member's.
            vectors = validation_vectors(self.model, self.validation)
            metrics = evaluate_ranking(self.model, self.exclude, self.validation,
                                       self.candidates, self.k_values,
                                       ("precision", "recall", "ndcg", "map"), vectors=vectors)
            if self.member_stopping is not None:
                values = member_metrics(self.model, self.exclude, self.validation,
                                        self.candidates, self.metric, np.flatnonzero(active),
                                        vectors=vectors)
                metrics.update({f"member{m}_{self.metric}": v for m, v in values.items()})
        seconds = time.perf_counter() - started
        lr = self.optimizer.learning_rate
        lr = float(lr(self.optimizer.iterations) if callable(lr) else lr)
        return {"epoch": epoch, "loss": loss, "members_trained": int(active.sum()),
                **{(k if k.startswith("member") else f"val_{k}"): v for k, v in metrics.items()},
                "learning_rate": lr, "train_seconds": train_seconds, "seconds": seconds}

    def _write_epoch(self, epoch: int, record: dict, history: list, writer) -> None:
        """Update early stopping, checkpoint, log one line and the TensorBoard scalars."""
        state = self.state
        value = record.get(f"val_{self.metric}", np.nan)
        state["seconds"].assign_add(record["seconds"])
        improved = self.validation is None or (
            value > state["best_metric"].numpy() + self.config.training.early_stopping_min_delta)
        members = self.member_stopping
        if members is not None:
            values = None if self.validation is None else {
                m: record[f"member{m}_{self.metric}"] for m in range(self.members)
                if f"member{m}_{self.metric}" in record}
            improved = members.update(epoch, values) or self.validation is None
        if improved:
            state["best_metric"].assign(value)
            state["best_epoch"].assign(epoch)
            state["wait"].assign(0)
            state["seconds_to_best"].assign(state["seconds"].numpy())
            if self.validation is not None and members is None:
                tf.train.Checkpoint(model=self.model).write(self.best_prefix)
        else:
            state["wait"].assign_add(1)
        state["epoch"].assign(epoch)
        self.manager.save(checkpoint_number=epoch)
        write_json(self.history_path, history)  # atomic: a kill never leaves half a log
        shown = ", ".join(f"{k[4:]} {v:.4f}" for k, v in record.items()
                          if k.startswith("val_") and k.endswith("@10"))
        logger.info(f"epoch {epoch:3d}/{self.config.training.epochs}  loss {record['loss']:.4f}  "
                    f"{shown}  lr {record['learning_rate']:.2e}  {record['seconds']:.1f} s"
                    + ("  *" if improved else ""))
        if writer is not None:
            with writer.as_default(step=epoch):
                for key, val in record.items():
                    if key != "epoch":
                        tf.summary.scalar(key, val)
            writer.flush()
