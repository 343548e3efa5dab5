"""The two towers and the TFRS retrieval model trained with BCE over sampled negatives.

`Tower` is one side (user or item): an id embedding, the side's encoded features
(categorical embeddings, standardised numerics, mean-pooled multi-hot lists) and, for users,
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
Everything the model needs from the data (feature tables, training history, sampling
distribution) is held as constants, so a step is a pure function of two index tensors.

Model options beyond config.py's keys (read from `config.model` when present, else from
`MODEL_DEFAULTS`, and overridable as `build_model(..., **options)`): `use_user_id`,
`history_dropout`, `history_leave_one_out`.

Input: any object with `num_users`, `num_items`, `features`, `feature_specs` and `history`
(e.g. `ProcessedData`); see docs/architecture.md for their formats.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from twotower_utils import losses  # noqa: E402
from twotower_utils.config import Config  # noqa: E402
from twotower_utils.ensemble import member_settings  # noqa: E402
from twotower_utils.explicit_negatives import ExplicitNegatives  # noqa: E402
from twotower_utils.sampler import PairSampler, ragged_rows  # noqa: E402

__all__ = ["MODEL_DEFAULTS", "CheckpointedDropout", "Tower", "TwoTowerModel", "build_model",
           "feature_dim", "ragged_rows"]

ID_FEATURE = "__id__"  # per-side table: index -> id-embedding row (0 when unseen in training)
MODEL_DEFAULTS = {
    # Users are described by their history and features; a free id vector mostly overfits.
    "use_user_id": False,
    # Share of a user's history left out of the pooled aggregate at each training step.
    "history_dropout": 0.3,
    # Also leave the positive being scored out of its own user's history.
    "history_leave_one_out": False,
}


def feature_dim(cardinality: int, embedding_dim: int) -> int:
    """Embedding width for a categorical feature: ~6 * cardinality^0.25, in [4, embedding_dim]."""
    return int(min(embedding_dim, max(4, round(6 * cardinality**0.25))))


class CheckpointedDropout(tf.keras.layers.Dropout):
    """Dropout drawing its masks from a `tf.random.Generator` that checkpoints save.

    Keras' own dropout keeps its random state outside the checkpoint, so a resumed run
    would draw different masks than an uninterrupted one.
    """

    def __init__(self, rate: float, seed: int, **kwargs):
        super().__init__(rate, seed=seed, **kwargs)
        self.generator = tf.random.Generator.from_seed(seed)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Zero each unit with probability `rate` (scaling the rest) when training."""
        if not training or self.rate == 0:
            return inputs
        keep = self.generator.uniform(tf.shape(inputs)) >= self.rate
        return tf.where(keep, inputs / (1.0 - self.rate), tf.zeros_like(inputs))


class Tower(tf.keras.Model):
    """One side's tower: ids, features (and history) -> one embedding per row.

    Args:
        side: "user" or "item" (names the layers).
        num_ids: rows of the id embedding (index 0 = out-of-vocabulary).
        specs: that side's feature specs (`feature_specs[side]`).
        config: the `model` section of the configuration.
        num_history_items: rows of the history-item embedding; 0 disables the history input.
        seed: seed of the dropout generators (their state is checkpointed with the model).
        use_id: whether rows get an id embedding.
        dropouts: each member's dropout rate (default: `config.dropout` for all).

    Call with a dict: `id` int `[B]` (embedding row), one entry per feature (int `[B]`
    categorical, float `[B]` numeric, int `[B, max_len]` multi-hot, 0 = unknown/padding) and,
    with history, either `history` (item indices: a `tf.RaggedTensor`, or a dense tensor
    padded with 0) or the pooled
    `history_sum` `[B, d]` / `history_count` `[B]`. Returns float32 `[B, embedding_dim]`.
    """

    def __init__(self, side: str, num_ids: int, specs: list[dict[str, Any]], config,
                 num_history_items: int = 0, seed: int = 0, use_id: bool = True,
                 dropouts: list[float] | None = None, **kwargs):
        super().__init__(name=f"{side}_tower", **kwargs)
        dim = config.embedding_dim
        # Members share nothing: every table is `members` slices wide, one per member, and
        # each member has its own layers (see the module docstring).
        self.members = members = config.ensemble_size
        self.side = side
        self.specs = [dict(spec) for spec in specs]
        self.normalize = config.similarity == "cosine"
        self.id_embedding = (
            tf.keras.layers.Embedding(num_ids, members * dim, name=f"{side}_id_embedding")
            if use_id else None)
        self.feature_embeddings = {}
        for spec in self.specs:
            if spec["type"] in ("categorical", "multi_hot"):
                size = len(spec["vocabulary"]) + 1
                self.feature_embeddings[spec["name"]] = tf.keras.layers.Embedding(
                    size, members * feature_dim(size, dim),
                    name=f"{side}_{spec['name']}_embedding")
        self.history_embedding = (
            tf.keras.layers.Embedding(num_history_items, members * dim, name="history_embedding")
            if num_history_items else None
        )
        self.member_layers = []
        for member in range(members):
            prefix = "" if members == 1 else f"member_{member}_"
            hidden = []
            for i, units in enumerate(config.hidden_layers):
                hidden.append([
                    tf.keras.layers.Dense(units, name=f"{prefix}dense_{i}"),
                    tf.keras.layers.BatchNormalization(name=f"{prefix}batch_norm_{i}"),
                    tf.keras.layers.Activation(config.activation,
                                               name=f"{prefix}activation_{i}"),
                    CheckpointedDropout(config.dropout if dropouts is None
                                        else dropouts[member], seed=seed + 100 * member + i,
                                        name=f"{prefix}dropout_{i}"),
                ])
            projection = (tf.keras.layers.Dense(dim, name=f"{prefix}projection")
                          if config.output_projection else None)
            self.member_layers.append((hidden, projection))
        self.hidden, self.projection = self.member_layers[0]

    def lookup(self, layer: tf.keras.layers.Embedding, idx: tf.Tensor,
               member: int | None = None) -> tf.Tensor:
        """Rows `idx` of a wide table: every member's slice, or only `member`'s.

        A member's slice is read through a `[rows * members, width]` view of the table (row
        `idx * members + member`), so training one member gathers only its own columns.
        """
        if member is None or self.members == 1:
            return layer(idx)
        if not layer.built:
            layer.build(None)
        view = tf.reshape(layer.embeddings, [-1, layer.output_dim // self.members])
        return tf.gather(view, idx * self.members + member)

    def pool_history(self, history: tf.RaggedTensor,
                     member: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Sum of the history-item embeddings per row (every member's slice, or `member`'s)
        and the row lengths (float32 `[B]`)."""
        # Gather + sorted segment sum: about twice as fast, forward and backward, as the
        # sparse x dense product on CPU (measured on ML-100K batches, 52K history entries).
        vectors = self.lookup(self.history_embedding, history.flat_values, member)
        sums = tf.math.segment_sum(vectors, history.value_rowids())
        # segment_sum stops at the last non-empty row: pad the empty rows after it.
        sums = tf.pad(sums, [[0, history.nrows() - tf.shape(sums, out_type=tf.int64)[0]],
                             [0, 0]])
        return sums, tf.cast(history.row_lengths(), tf.float32)

    def call(self, inputs: dict[str, Any], training: bool = False,
             member: int | None = None) -> tf.Tensor:
        """Embed a batch (see the class docstring for the inputs): every member's embedding
        side by side, or with `member` only that member's (`[B, embedding_dim]`)."""
        sliced, shared = [], []  # per-member slices of the wide tables; inputs all share
        if self.id_embedding is not None:
            sliced.append(self.lookup(self.id_embedding, inputs["id"], member))
        for spec in self.specs:
            value = inputs[spec["name"]]
            if spec["type"] == "numeric":
                shared.append(tf.reshape(tf.cast(value, tf.float32), [-1, 1]))
            elif spec["type"] == "categorical":
                sliced.append(self.lookup(self.feature_embeddings[spec["name"]], value, member))
            else:
                mask = tf.cast(value > 0, tf.float32)[..., None]
                vectors = self.lookup(self.feature_embeddings[spec["name"]], value, member)
                pooled = tf.reduce_sum(vectors * mask, 1)
                sliced.append(pooled / tf.maximum(tf.reduce_sum(mask, 1), 1.0))
        if self.history_embedding is not None:
            if "history" in inputs:
                history = inputs["history"]
                if not isinstance(history, tf.RaggedTensor):
                    history = tf.RaggedTensor.from_tensor(history, padding=0)
                sums, counts = self.pool_history(history, member)
            else:
                sums, counts = inputs["history_sum"], inputs["history_count"]
            counts = tf.reshape(counts, [-1, 1])
            sliced.append(sums / tf.maximum(counts, 1.0))
            shared.append(tf.math.log1p(counts))
        if member is not None:
            return self._head(member, sliced + shared, training)
        slices = [tf.split(part, self.members, axis=1) for part in sliced]
        outputs = [self._head(m, [pieces[m] for pieces in slices] + shared, training)
                   for m in range(self.members)]
        return outputs[0] if self.members == 1 else tf.concat(outputs, axis=1)

    def _head(self, member: int, parts: list[tf.Tensor], training: bool) -> tf.Tensor:
        """Member `member`'s layers on its concatenated inputs."""
        hidden, projection = self.member_layers[member]
        x = tf.concat(parts, axis=1)
        for dense, norm, activation, dropout in hidden:
            x = dropout(activation(norm(dense(x), training=training)), training=training)
        if projection is not None:
            x = projection(x)
        return tf.math.l2_normalize(x, axis=1) if self.normalize else x

    def input_signature(self) -> dict[str, tf.TensorSpec]:
        """TensorSpecs of the raw (unpooled) inputs: `id`, each feature, `history` (padded)."""
        signature = {"id": tf.TensorSpec([None], tf.int32, name="id")}
        for spec in self.specs:
            kind = spec["type"]
            signature[spec["name"]] = tf.TensorSpec(
                [None, None] if kind == "multi_hot" else [None],
                tf.float32 if kind == "numeric" else tf.int32, name=spec["name"])
        if self.history_embedding is not None:
            signature["history"] = tf.TensorSpec([None, None], tf.int32, name="history")
        return signature

    @property
    def output_dim(self) -> int:
        """Size of the embeddings this tower returns (members x each member's size)."""
        return self.members * int(self.projection.units if self.projection is not None
                                  else self.hidden[-1][0].units)


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
        for side, size in (("user", self.num_users), ("item", self.num_items)):
            tables[side] = {name[len(side) + 1:]: tf.constant(value)
                            for name, value in data.features.items()
                            if name.startswith(f"{side}/")}
            tables[side].setdefault(ID_FEATURE, tf.range(size, dtype=tf.int32))
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

    def embed_new(self, side: str, features: dict[str, np.ndarray],
                  history_items: np.ndarray | None = None) -> np.ndarray:
        """Cold start: the embedding (`[d]`) of a user or item outside the vocabulary.

        `features` holds one encoded row per feature of that side
        (`FeatureEncoder.transform_record`; a missing feature counts as unknown);
        `history_items` the item indices a new user interacted with. The id embedding is
        the out-of-vocabulary row.
        """
        tower = self.user_tower if side == "user" else self.item_tower
        signature = tower.input_signature()
        inputs = {"id": tf.zeros([1], tf.int32)}
        for spec in tower.specs:
            value, given = signature[spec["name"]], features.get(spec["name"])
            inputs[spec["name"]] = (tf.zeros([1] * len(value.shape), value.dtype)
                                    if given is None
                                    else tf.constant(np.asarray(given), value.dtype))
        if tower.history_embedding is not None:
            items = np.asarray([] if history_items is None else history_items, np.int32)
            inputs["history"] = tf.RaggedTensor.from_row_lengths(items, [len(items)])
        return tower(inputs)[0].numpy()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Scalar loss of a batch `{"user_idx": int [B], "item_idx": int [B]}`: the configured
        loss plus L2 (see `twotower_utils.losses.compute_loss`)."""
        return losses.compute_loss(self, inputs, training)

    def train_step(self, inputs: dict[str, tf.Tensor],
                   active: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """One optimisation step on `inputs` (as `compute_loss`, `active` members only);
        returns `{"loss": ...}`.

        Gradients of embedding tables arrive as IndexedSlices; they are made dense first
        because the fused dense Adam update is much cheaper per step than the sparse path
        for tables of this size (both touch every row of Adam's moments).
        """
        with tf.GradientTape() as tape:
            loss = losses.compute_loss(self, inputs, training=True, active=active)
        variables = self.trainable_variables
        gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in tape.gradient(loss, variables)]
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
