"""The two towers and the TFRS retrieval model trained with BCE over sampled negatives.

`Tower` is one side (user or item): an id embedding, the side's features (encoded by the
tower's own preprocessing layers; categorical embeddings, standardised numerics, mean-pooled
multi-hot lists) and, for users,
the mean embedding of their training items; then `Dense -> BatchNorm -> activation ->
Dropout` per hidden layer and a projection to the shared embedding size (L2-normalised for
cosine similarity). The towers are separate Keras models, so the item tower can embed the
catalogue once and the user tower can run alone at serving time.

With `ensemble_size` K > 1 a tower holds K members that share nothing: every table is K
slices wide and each member has its own layers. The tower returns the K members' embeddings
side by side, so one dot product sums the members' scores and the ensemble serves as one
model. `TwoTowerRecallSystem` trains the members one after another as single-member models
with their own seeds (their own batch order, negatives and dropout masks: sharing those made
members too alike to gain from joining) and joins them with `fitting.join_members`. Trained as one
model, the members' losses add up.

`TwoTowerModel` is a `tfrs.models.Model`. Its BCE loss scores each positive (u, i) against
`num_negatives` items drawn afresh every step inside the graph (uniform or popularity^alpha
over the items seen in training, never one of u's training positives), optionally with logQ
correction and in-batch negatives; `loss="sampled_softmax"` is a softmax of each positive
against `softmax_negatives` items shared by the batch (all training items when 0);
`loss="softmax"` is TFRS's in-batch `Retrieval` loss (computed directly, `losses.in_batch_softmax`).
In training, the user's history is pooled after a random share of it (`history_dropout`) is
left out, the denoising that lets the history aggregate generalise to unseen items.
Everything the model needs from the data (feature tables, encoded once by the towers'
`FeatureEncoding` layers; training history; sampling distribution) is held as constants, so
a step is a pure function of two index tensors.

Model options beyond config.py's keys (read from `config.model` when present, else from
`MODEL_DEFAULTS`, and overridable as `build_model(..., **options)`): `use_user_id`,
`history_dropout`, `history_leave_one_out`.

Input: any object with `num_users`, `num_items`, `features`, `feature_specs` and `history`
(e.g. `ProcessedData`); see docs/architecture.md for their formats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf
import tensorflow_recommenders as tfrs

from twotower_utils.config import Config, ModelConfig
from twotower_utils.data.features import raw_feature_record
from twotower_utils.data.processed import ID_FEATURE
from twotower_utils.model import losses
from twotower_utils.model.ensemble import member_settings
from twotower_utils.model.explicit_negatives import ExplicitNegatives
from twotower_utils.model.sampler import PairSampler, ragged_rows
from twotower_utils.model.towers import CheckpointedDropout, Tower, feature_dim

__all__ = ["MODEL_DEFAULTS", "CheckpointedDropout", "Tower", "TwoTowerModel", "build_model",
           "feature_dim", "ragged_rows"]

# The `model` keys `build_model(..., **options)` may override, with the configuration's
# defaults (`ModelConfig`'s, which are config.json's): `use_user_id` (users are described by
# their history and features; a free id vector mostly overfits), `history_dropout` (the share
# of a user's history left out of the pooled aggregate at each training step) and
# `history_leave_one_out` (also leave the scored positive out of its own user's history).
MODEL_DEFAULTS = {key: ModelConfig.__dataclass_fields__[key].default
                  for key in ("use_user_id", "history_dropout", "history_leave_one_out")}


class TwoTowerModel(tfrs.models.Model):
    """User tower + item tower with the configured loss (see the module docstring).

    Args:
        data: processed data (`num_users`, `num_items`, `features`, `feature_specs`,
            `history` of training positives).
        config: the full `Config` (model, training and data sections are read).

    `compute_loss({"user_idx": [B], "item_idx": [B]}, training)` returns the scalar loss;
    `user_embeddings` / `item_embeddings` embed index arrays for evaluation and serving.
    """

    def __init__(self, data, config: Config, **options):
        super().__init__(name="two_tower")
        unknown = set(options) - set(MODEL_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown model option(s) {sorted(unknown)}; known: "
                            f"{sorted(MODEL_DEFAULTS)}")
        self.options = {key: options.get(key, getattr(config.model, key, default))
                        for key, default in MODEL_DEFAULTS.items()}
        model, train = config.model, config.training
        self.num_users, self.num_items = int(data.num_users), int(data.num_items)
        self.members = model.ensemble_size
        # Per member: its loss, negatives and history dropout (see `ensemble`).
        self.settings = member_settings(config, **{k: v for k, v in options.items()
                                                   if k != "use_user_id"})
        for member, settings in enumerate(self.settings):
            where = "" if self.members == 1 else f" (ensemble member {member})"
            if not 0.0 <= settings.history_dropout < 1.0:
                raise ValueError(f"history_dropout = {settings.history_dropout!r}{where}: "
                                 "expected a value in [0, 1)")
            if (settings.loss == "bce" and settings.num_negatives == 0
                    and not settings.in_batch_negatives):
                raise ValueError(f"data.num_negatives = 0 with training.loss = 'bce'{where} "
                                 "and no in-batch negatives: the loss would have no "
                                 "negatives; set num_negatives >= 1 or "
                                 "training.in_batch_negatives = true")
        first = self.settings[0]
        # Member 0's settings, under the names a single model has always had.
        self.loss_name, self.num_negatives = first.loss, first.num_negatives
        self.in_batch_negatives, self.logq_correction = (first.in_batch_negatives,
                                                         first.logq_correction)
        self.temperature, self.l2 = first.temperature, first.l2
        self.softmax_negatives, self.history_dropout = (first.softmax_negatives,
                                                        first.history_dropout)
        specs = data.feature_specs
        dropouts = [settings.dropout for settings in self.settings]
        self.user_tower = Tower("user", self.num_users, specs.get("user", []), model,
                                self.num_items if model.use_history else 0, seed=train.seed,
                                use_id=bool(self.options["use_user_id"]), dropouts=dropouts)
        self.item_tower = Tower("item", self.num_items, specs.get("item", []), model,
                                seed=train.seed + 1000, dropouts=dropouts)
        # One sampler per member: its own generator (negatives, history dropout) and
        # distribution; the positives' lookup tables are built once and shared.
        self.samplers = []
        for settings in self.settings:
            self.samplers.append(PairSampler(
                data.history, settings.negative_sampling, settings.popularity_alpha,
                seed=settings.seed, shared=self.samplers[0] if self.samplers else None))
        self.sampler = self.samplers[0]
        # Data, not state (draws use the samplers' generators): kept out of Keras' tracking.
        self.__dict__["explicit"] = ExplicitNegatives.for_model(data, self.settings)
        self._build_tables(data)

    def _build_tables(self, data) -> None:
        tables = {}
        for side, size, tower in (("user", self.num_users, self.user_tower),
                                  ("item", self.num_items, self.item_tower)):
            raw = {name[len(side) + 1:]: value for name, value in data.features.items()
                   if name.startswith(f"{side}/")}
            # The towers' own preprocessing layers encode the raw tables, once: the same
            # encoding an exported tower runs on a request.
            tables[side] = dict(tower.encoding.encode_tables(raw))
            ids = raw.get(ID_FEATURE)
            tables[side][ID_FEATURE] = (tf.range(size, dtype=tf.int32) if ids is None
                                        else tf.constant(ids, tf.int32))
        # Kept out of Keras' attribute tracking: these are data, not state to checkpoint.
        self.__dict__["_tables"] = tables

    def _side_inputs(self, side: str, idx: tf.Tensor) -> dict[str, tf.Tensor]:
        tables = self._tables[side]
        inputs = {name: tf.gather(table, idx) for name, table in tables.items()
                  if name != ID_FEATURE}
        inputs["id"] = tf.gather(tables[ID_FEATURE], idx)
        return inputs

    # ------------------------------------------------------------------ embeddings
    def embed_items(self, item_idx: tf.Tensor, training: bool = False,
                    member: int | None = None) -> tf.Tensor:
        """Item-tower output for item indices (int `[N]`) -> `[N, d]` (every member's
        embedding side by side, or with `member` only that member's)."""
        return self.item_tower(self._side_inputs("item", item_idx), training=training,
                               member=member)

    def embed_users(self, user_idx: tf.Tensor, history: tf.RaggedTensor | None = None,
                    training: bool = False, exclude_items: tf.Tensor | None = None,
                    member: int | None = None) -> tf.Tensor:
        """User-tower output for user indices (int `[B]`) -> `[B, d]`.

        `history` (ragged `[B, None]` item indices) defaults to the training history;
        `exclude_items` (`[B]`) removes one item per row from the pooled history, as done in
        training so a positive never sees itself in the user's history. With `member`, only
        that member's embedding, its history dropped out with its own masks (without it,
        every member's with member 0's).
        """
        inputs = self._side_inputs("user", user_idx)
        if self.user_tower.history_embedding is not None:
            sampler = self.samplers[member or 0]
            rate = self.settings[member or 0].history_dropout
            dropping = training and history is None and rate > 0
            if dropping:
                seed = sampler.step_seed()
            if history is None:
                # Pool each distinct user once: a batch repeats its heavy users many times.
                unique, where = tf.unique(user_idx)
                rows = tf.gather(sampler.history, unique)
                if dropping:
                    owners = tf.gather(unique, rows.value_rowids())
                    keep = sampler.kept(owners, rows.flat_values, seed, rate)
                    rows = tf.ragged.boolean_mask(rows, rows.with_flat_values(keep))
                sums, counts = self.user_tower.pool_history(rows, member)
                sums, counts = tf.gather(sums, where), tf.gather(counts, where)
            else:
                sums, counts = self.user_tower.pool_history(history, member)
            if exclude_items is not None:
                present = sampler.is_positive(user_idx, exclude_items)
                if dropping:
                    present &= sampler.kept(user_idx, exclude_items, seed, rate)
                present = tf.cast(present, tf.float32)
                excluded = self.user_tower.lookup(self.user_tower.history_embedding,
                                                  exclude_items, member)
                sums -= excluded * present[:, None]
                counts -= present
            inputs["history_sum"], inputs["history_count"] = sums, counts
        return self.user_tower(inputs, training=training, member=member)

    def user_embeddings(self, user_idx: np.ndarray, history: sp.csr_matrix | None = None,
                        batch_size: int = 4096) -> np.ndarray:
        """Inference embeddings (numpy `[len, d]`) of users; `history` rows are by user index."""
        out = []
        for start in range(0, len(user_idx), batch_size):
            idx = np.asarray(user_idx[start:start + batch_size], dtype=np.int32)
            rows = None if history is None else ragged_rows(history, idx)
            out.append(self.embed_users(tf.constant(idx), rows).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.item_tower.output_dim), np.float32)

    def item_embeddings(self, item_idx: np.ndarray | None = None,
                        batch_size: int = 16384) -> np.ndarray:
        """Inference embeddings (numpy `[len, d]`) of items (default: every index)."""
        item_idx = np.arange(self.num_items) if item_idx is None else np.asarray(item_idx)
        out = [self.embed_items(tf.constant(item_idx[s:s + batch_size], tf.int32)).numpy()
               for s in range(0, len(item_idx), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.item_tower.output_dim), np.float32)

    def embed_new(self, side: str, features: dict[str, Any],
                  history_items: np.ndarray | None = None) -> np.ndarray:
        """Cold start: the embedding (`[d]`) of a user or item outside the vocabulary.

        `features` holds that side's raw feature values, as in users.csv / items.csv (a
        missing feature counts as unknown); the tower's own `encoding` encodes them.
        `history_items` the item indices a new user interacted with. The id embedding is
        the out-of-vocabulary row.
        """
        tower = self.user_tower if side == "user" else self.item_tower
        inputs = {"id": tf.zeros([1], tf.int32)}
        if tower.specs:
            inputs.update(tower.encoding(raw_feature_record(features, tower.specs)))
        if tower.history_embedding is not None:
            items = np.asarray([] if history_items is None else history_items, np.int32)
            inputs["history"] = tf.RaggedTensor.from_row_lengths(items, [len(items)])
        return tower(inputs)[0].numpy()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Scalar loss of a batch `{"user_idx": int [B], "item_idx": int [B]}`: the configured
        loss plus L2 (see `twotower_utils.model.losses.compute_loss`)."""
        return losses.compute_loss(self, inputs, training)

    def train_step(self, inputs: dict[str, tf.Tensor], active: tf.Tensor | None = None,
                   loss_scale: float = 1.0) -> dict[str, tf.Tensor]:
        """One optimisation step on `inputs` (as `compute_loss`, `active` members only);
        returns `{"loss": ...}` (unscaled).

        The gradients are those of `loss_scale * loss`: under a strategy of R replicas the
        optimizer sums them over the replicas, so `1 / R` makes the update the mean over the
        global batch (`training.Trainer`). Gradients of embedding tables arrive as
        IndexedSlices; they are made dense first because the fused dense Adam update is much
        cheaper per step than the sparse path for tables of this size (both touch every row
        of Adam's moments).
        """
        with tf.GradientTape() as tape:
            loss = losses.compute_loss(self, inputs, training=True, active=active)
            # No multiply at all for one replica: the single-device graph stays as it was.
            scaled = loss if loss_scale == 1.0 else loss * loss_scale
        variables = self.trainable_variables
        gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in tape.gradient(scaled, variables)]
        self.optimizer.apply_gradients(zip(gradients, variables))
        return {"loss": loss}


def build_model(data, config: Config, **options) -> TwoTowerModel:
    """Build a `TwoTowerModel` for `data` with `config`, its variables created (seeded)."""
    tf.keras.utils.set_random_seed(config.training.seed)
    model = TwoTowerModel(data, config, **options)
    users = tf.constant([0], tf.int32)
    model.embed_users(users)
    model.embed_items(users)
    return model
