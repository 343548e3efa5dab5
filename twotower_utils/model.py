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
members too alike to gain from joining) and joins them with `join_members`. Trained as one
model, the members' losses add up.

`TwoTowerModel` is a `tfrs.models.Model`. Its BCE loss scores each positive (u, i) against
`num_negatives` items drawn afresh every step inside the graph (uniform or popularity^alpha
over the items seen in training, never one of u's training positives), optionally with logQ
correction and in-batch negatives; `loss="sampled_softmax"` is a softmax of each positive
against `softmax_negatives` items shared by the batch (all training items when 0);
`loss="softmax"` uses TFRS's in-batch `Retrieval` task.
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

from twotower_utils.config import Config  # noqa: E402
from twotower_utils.training import PairSampler, ragged_rows  # noqa: E402

__all__ = ["MODEL_DEFAULTS", "CheckpointedDropout", "Tower", "TwoTowerModel", "build_model",
           "feature_dim", "join_members", "member_config", "ragged_rows"]

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

    Call with a dict: `id` int `[B]` (embedding row), one entry per feature (int `[B]`
    categorical, float `[B]` numeric, int `[B, max_len]` multi-hot, 0 = unknown/padding) and,
    with history, either `history` (item indices: a `tf.RaggedTensor`, or a dense tensor
    padded with 0) or the pooled
    `history_sum` `[B, d]` / `history_count` `[B]`. Returns float32 `[B, embedding_dim]`.
    """

    def __init__(self, side: str, num_ids: int, specs: list[dict[str, Any]], config,
                 num_history_items: int = 0, seed: int = 0, use_id: bool = True, **kwargs):
        super().__init__(name=f"{side}_tower", **kwargs)
        dim = config.embedding_dim
        # Members share nothing: every table is `members` slices wide, one per member, and
        # each member has its own layers (see the module docstring).
        self.members = members = int(getattr(config, "ensemble_size", 1))
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
                    CheckpointedDropout(config.dropout, seed=seed + 100 * member + i,
                                        name=f"{prefix}dropout_{i}"),
                ])
            projection = (tf.keras.layers.Dense(dim, name=f"{prefix}projection")
                          if config.output_projection else None)
            self.member_layers.append((hidden, projection))
        self.hidden, self.projection = self.member_layers[0]

    def pool_history(self, history: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Sum of the history-item embeddings per row and the row lengths (float32 `[B]`)."""
        if not self.history_embedding.built:
            self.history_embedding.build(None)
        # A sparse x dense product: neither it nor its gradient materialises one embedding
        # row per history entry.
        indices = tf.stack([history.value_rowids(), tf.cast(history.flat_values, tf.int64)], 1)
        matrix = tf.sparse.SparseTensor(
            indices, tf.ones_like(history.flat_values, tf.float32),
            tf.stack([history.nrows(), tf.cast(self.history_embedding.input_dim, tf.int64)]))
        sums = tf.sparse.sparse_dense_matmul(matrix, self.history_embedding.embeddings)
        return sums, tf.cast(history.row_lengths(), tf.float32)

    def call(self, inputs: dict[str, Any], training: bool = False) -> tf.Tensor:
        """Embed a batch (see the class docstring for the inputs)."""
        sliced, shared = [], []  # per-member slices of the wide tables; inputs all share
        if self.id_embedding is not None:
            sliced.append(self.id_embedding(inputs["id"]))
        for spec in self.specs:
            value = inputs[spec["name"]]
            if spec["type"] == "numeric":
                shared.append(tf.reshape(tf.cast(value, tf.float32), [-1, 1]))
            elif spec["type"] == "categorical":
                sliced.append(self.feature_embeddings[spec["name"]](value))
            else:
                mask = tf.cast(value > 0, tf.float32)[..., None]
                pooled = tf.reduce_sum(self.feature_embeddings[spec["name"]](value) * mask, 1)
                sliced.append(pooled / tf.maximum(tf.reduce_sum(mask, 1), 1.0))
        if self.history_embedding is not None:
            if "history" in inputs:
                history = inputs["history"]
                if not isinstance(history, tf.RaggedTensor):
                    history = tf.RaggedTensor.from_tensor(history, padding=0)
                sums, counts = self.pool_history(history)
            else:
                sums, counts = inputs["history_sum"], inputs["history_count"]
            counts = tf.reshape(counts, [-1, 1])
            sliced.append(sums / tf.maximum(counts, 1.0))
            shared.append(tf.math.log1p(counts))
        slices = [tf.split(part, self.members, axis=1) for part in sliced]
        outputs = []
        for member, (hidden, projection) in enumerate(self.member_layers):
            x = tf.concat([pieces[member] for pieces in slices] + shared, axis=1)
            for dense, norm, activation, dropout in hidden:
                x = dropout(activation(norm(dense(x), training=training)), training=training)
            if projection is not None:
                x = projection(x)
            outputs.append(tf.math.l2_normalize(x, axis=1) if self.normalize else x)
        return outputs[0] if self.members == 1 else tf.concat(outputs, axis=1)

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
        self.history_dropout = float(self.options["history_dropout"])
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout = {self.history_dropout!r}: expected a value "
                             "in [0, 1)")
        model, train, sampling = config.model, config.training, config.data
        self.num_users, self.num_items = int(data.num_users), int(data.num_items)
        self.num_negatives = int(sampling.num_negatives)
        self.loss_name = train.loss
        self.in_batch_negatives = bool(train.in_batch_negatives)
        self.logq_correction = bool(train.logq_correction)
        self.temperature = float(model.temperature)
        self.l2 = float(model.l2_regularization)
        self.members = int(getattr(model, "ensemble_size", 1))
        self.softmax_negatives = int(getattr(train, "softmax_negatives", 0))
        if self.loss_name == "bce" and self.num_negatives == 0 and not self.in_batch_negatives:
            raise ValueError(f"data.num_negatives = 0 with training.loss = {self.loss_name!r} "
                             "and no in-batch "
                             "negatives: the loss would have no negatives; set num_negatives "
                             ">= 1 or training.in_batch_negatives = true")
        specs = data.feature_specs
        self.user_tower = Tower("user", self.num_users, specs.get("user", []), model,
                                self.num_items if model.use_history else 0, seed=train.seed,
                                use_id=bool(self.options["use_user_id"]))
        self.item_tower = Tower("item", self.num_items, specs.get("item", []), model,
                                seed=train.seed + 1000)
        self.sampler = PairSampler(data.history, sampling.negative_sampling,
                                   sampling.popularity_alpha, seed=train.seed)
        # Summed, then divided by the batch size in compute_loss, as the BCE loss is.
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
            temperature=self.temperature)
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
    def embed_items(self, item_idx: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Item-tower output for item indices (int `[N]`) -> `[N, d]`."""
        return self.item_tower(self._side_inputs("item", item_idx), training=training)

    def embed_users(self, user_idx: tf.Tensor, history: tf.RaggedTensor | None = None,
                    training: bool = False, exclude_items: tf.Tensor | None = None) -> tf.Tensor:
        """User-tower output for user indices (int `[B]`) -> `[B, d]`.

        `history` (ragged `[B, None]` item indices) defaults to the training history;
        `exclude_items` (`[B]`) removes one item per row from the pooled history, as done in
        training so a positive never sees itself in the user's history.
        """
        inputs = self._side_inputs("user", user_idx)
        if self.user_tower.history_embedding is not None:
            dropping = training and history is None and self.history_dropout > 0
            if dropping:
                seed = self.sampler.step_seed()
            if history is None:
                # Pool each distinct user once: a batch repeats its heavy users many times.
                unique, where = tf.unique(user_idx)
                rows = tf.gather(self.sampler.history, unique)
                if dropping:
                    owners = tf.gather(unique, rows.value_rowids())
                    keep = self.sampler.kept(owners, rows.flat_values, seed,
                                             self.history_dropout)
                    rows = tf.ragged.boolean_mask(rows, rows.with_flat_values(keep))
                sums, counts = self.user_tower.pool_history(rows)
                sums, counts = tf.gather(sums, where), tf.gather(counts, where)
            else:
                sums, counts = self.user_tower.pool_history(history)
            if exclude_items is not None:
                present = self.sampler.is_positive(user_idx, exclude_items)
                if dropping:
                    present &= self.sampler.kept(user_idx, exclude_items, seed,
                                                 self.history_dropout)
                present = tf.cast(present, tf.float32)
                sums -= self.user_tower.history_embedding(exclude_items) * present[:, None]
                counts -= present
            inputs["history_sum"], inputs["history_count"] = sums, counts
        return self.user_tower(inputs, training=training)

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
        """Scalar loss of a batch `{"user_idx": int [B], "item_idx": int [B]}`.

        BCE: per positive, the binary cross-entropy of the positive (label 1) plus that of
        each of its `num_negatives` sampled negatives and, if enabled, of the other rows'
        positives (label 0), averaged over the batch's positives; plus
        `l2_regularization` * the mean squared norm of the batch's user and item embeddings.
        Softmax: TFRS's in-batch retrieval loss, averaged over positives, plus the same L2.
        """
        users = tf.cast(inputs["user_idx"], tf.int32)
        items = tf.cast(inputs["item_idx"], tf.int32)
        batch = tf.size(users)
        user_vec = self.embed_users(
            users, training=training,
            exclude_items=items if self.options["history_leave_one_out"] else None)
        if self.loss_name == "softmax":
            item_vec = self.embed_items(items, training=training)
            # Another row's item that is also this user's positive is not a negative.
            mask = tf.logical_not(self.sampler.is_positive(users[:, None], items[None, :]))
            mask |= tf.eye(batch, dtype=tf.bool)
            log_q = tf.gather(self.sampler.log_freq, items) if self.logq_correction else None
            loss = tf.add_n([
                self.task(member_user, member_item, compute_metrics=False, score_mask=mask,
                          candidate_sampling_probability=None if log_q is None
                          else tf.exp(log_q))
                for member_user, member_item in zip(tf.split(user_vec, self.members, axis=1),
                                                    tf.split(item_vec, self.members, axis=1))])
            return loss / tf.cast(batch, tf.float32) + self._l2_penalty(
                user_vec, tf.reduce_sum(item_vec**2, 1))
        if self.loss_name == "sampled_softmax":
            return self._sampled_softmax_loss(users, items, user_vec, training)
        k = self.num_negatives
        negatives, valid = self.sampler.sample(users, k)
        all_items = tf.concat([items, tf.reshape(negatives, [-1])], axis=0)
        # The tower runs once per distinct item: a batch's positives and negatives repeat
        # popular items many times (and cannot exceed the catalogue).
        unique_items, where = tf.unique(all_items)
        unique_vec = self.embed_items(unique_items, training=training)
        # Gathering each part separately: slicing one gathered tensor would cost a full-size
        # zero-padded gradient per slice.
        pos_vec = tf.gather(unique_vec, where[:batch])
        neg_vec = tf.gather(unique_vec, where[batch:])
        # Logits per ensemble member: [B, members, candidates]; masks broadcast over members.
        user_m, pos_m = self._per_member(user_vec), self._per_member(pos_vec)
        neg_m = tf.reshape(neg_vec, [batch, k, self.members, -1])
        temperature = self.temperature
        logits = [tf.reduce_sum(user_m * pos_m, axis=2)[..., None] / temperature,
                  tf.einsum("bmd,bkmd->bmk", user_m, neg_m) / temperature]
        labels = [tf.ones_like(logits[0]), tf.zeros_like(logits[1])]
        weights = [tf.ones([batch, 1, 1]), tf.cast(valid, tf.float32)[:, None, :]]
        if self.logq_correction:
            # With negatives drawn from q, BCE's optimal logit is log p(i|u) - log(k q(i));
            # subtracting log(k q(i)) in training leaves the score itself ~ log p(i|u).
            log_kq = tf.gather(self.sampler.log_q, tf.concat([items[:, None], negatives], 1))
            log_kq = (log_kq + tf.math.log(float(max(k, 1))))[:, None, :]
            logits = [logits[0] - log_kq[..., :1], logits[1] - log_kq[..., 1:]]
        if self.in_batch_negatives:
            scores = tf.einsum("bmd,cmd->bmc", user_m, pos_m) / temperature
            if self.logq_correction:
                # In-batch items arrive with their training frequency.
                log_bq = tf.gather(self.sampler.log_freq, items)
                scores -= log_bq[None, None, :] + tf.math.log(tf.cast(batch, tf.float32))
            keep = tf.logical_not(self.sampler.is_positive(users[:, None], items[None, :]))
            logits.append(scores)
            labels.append(tf.zeros_like(scores))
            weights.append(tf.cast(keep, tf.float32)[:, None, :])
        logits = tf.concat(logits, axis=2)
        weights = tf.concat(weights, axis=2)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.concat(labels, axis=2), logits)
        loss = tf.reduce_sum(bce * weights) / tf.cast(batch, tf.float32)
        return loss + self._l2_penalty(
            user_vec, tf.gather(tf.reduce_sum(unique_vec**2, 1), where))

    def _per_member(self, vectors: tf.Tensor) -> tf.Tensor:
        """`[N, members * d]` -> `[N, members, d]`: each ensemble member's own embedding."""
        return tf.reshape(vectors, [tf.shape(vectors)[0], self.members, -1])

    def _sampled_softmax_loss(self, users: tf.Tensor, items: tf.Tensor, user_vec: tf.Tensor,
                              training: bool) -> tf.Tensor:
        """Softmax of each positive against `softmax_negatives` items shared by the batch.

        The shared items are drawn from the sampling distribution every step, or are the
        whole training catalogue when `softmax_negatives` is 0 or reaches its size (an exact
        softmax, no logQ needed). A shared item that is one of the row's user's training positives
        leaves that row's softmax. With `logq_correction` every logit drops log(k q(i)), the
        expected count of i among the draws; in-batch negatives as in the BCE loss. Each
        ensemble member has its own softmax; their losses add up.
        """
        batch = tf.size(users)
        pool = self.sampler.pool
        count = self.softmax_negatives
        full = count == 0 or count >= int(pool.shape[0])
        shared = pool if full else self.sampler.draw([count])
        unique_items, where = tf.unique(tf.concat([items, shared], axis=0))
        unique_vec = self.embed_items(unique_items, training=training)
        pos_vec = tf.gather(unique_vec, where[:batch])
        shared_vec = tf.gather(unique_vec, where[batch:])
        user_m, pos_m = self._per_member(user_vec), self._per_member(pos_vec)
        temperature = self.temperature
        logits = [tf.reduce_sum(user_m * pos_m, axis=2)[..., None] / temperature,
                  tf.einsum("bmd,smd->bms", user_m, self._per_member(shared_vec))
                  / temperature]
        keep = [tf.ones([batch, 1, 1], tf.bool),
                tf.logical_not(self.sampler.is_positive(users[:, None], shared[None, :]))
                [:, None, :]]
        if self.logq_correction and not full:
            log_k = tf.math.log(float(count))
            logits[0] -= (tf.gather(self.sampler.log_q, items) + log_k)[:, None, None]
            logits[1] -= (tf.gather(self.sampler.log_q, shared) + log_k)[None, None, :]
        if self.in_batch_negatives:
            scores = tf.einsum("bmd,cmd->bmc", user_m, pos_m) / temperature
            if self.logq_correction:
                scores -= (tf.gather(self.sampler.log_freq, items)
                           + tf.math.log(tf.cast(batch, tf.float32)))[None, None, :]
            logits.append(scores)
            keep.append(tf.logical_not(self.sampler.is_positive(users[:, None], items[None, :]))
                        [:, None, :])
        logits = tf.concat(logits, axis=2)
        keep = tf.broadcast_to(tf.concat(keep, axis=2), tf.shape(logits))
        logits = tf.where(keep, logits, tf.fill(tf.shape(logits), -1e9))
        loss = -tf.reduce_sum(tf.nn.log_softmax(logits, axis=2)[..., 0])
        return loss / tf.cast(batch, tf.float32) + self._l2_penalty(
            user_vec, tf.gather(tf.reduce_sum(unique_vec**2, 1), where))

    def train_step(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """One optimisation step on `inputs` (as `compute_loss`); returns `{"loss": ...}`.

        Gradients of embedding tables arrive as IndexedSlices; they are made dense first
        because the fused dense Adam update is much cheaper per step than the sparse path
        for tables of this size (both touch every row of Adam's moments).
        """
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
        variables = self.trainable_variables
        gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in tape.gradient(loss, variables)]
        self.optimizer.apply_gradients(zip(gradients, variables))
        return {"loss": loss}

    def _l2_penalty(self, user_vec: tf.Tensor, item_sq_norms: tf.Tensor) -> tf.Tensor:
        # Penalising the batch's outputs (not whole tables) keeps a step's cost independent
        # of the catalogue size; each item counts once per occurrence in the batch.
        if self.l2 == 0.0:
            return tf.constant(0.0)
        return self.l2 * (tf.reduce_mean(tf.reduce_sum(user_vec**2, 1))
                          + tf.reduce_mean(item_sq_norms))


def build_model(data, config: Config, **options) -> TwoTowerModel:
    """Build a `TwoTowerModel` for `data` with `config`, its variables created (seeded)."""
    tf.keras.utils.set_random_seed(config.training.seed)
    model = TwoTowerModel(data, config, **options)
    users = tf.constant([0], tf.int32)
    model.embed_users(users)
    model.embed_items(users)
    return model


MEMBER_SEED_STRIDE = 1000  # runs with seeds s and s + 1 must not share members


def member_config(config: Config, member: int) -> Config:
    """The configuration ensemble member `member` trains with: one member, its entry of
    `model.ensemble_member_overrides` (if any) applied, and the seed
    `training.seed + 1000 * member`."""
    from dataclasses import replace

    from twotower_utils.config import SINGLE_MEMBER

    member_overrides = config.model.ensemble_member_overrides
    extra = member_overrides[member] if member < len(member_overrides) else {}
    config = config.with_overrides({**extra, **SINGLE_MEMBER})
    seed = config.training.seed + MEMBER_SEED_STRIDE * member
    return replace(config, training=replace(config.training, seed=seed))


def join_members(members: list[TwoTowerModel], data, config: Config) -> TwoTowerModel:
    """One model whose towers hold the trained single-member `members` side by side.

    Returns a `TwoTowerModel` with `ensemble_size = len(members)` built for `data`: its wide
    tables are the members' tables concatenated (member m is slice m) and member m's layers
    carry member m's weights, so its embeddings are the members' embeddings concatenated.
    """
    from dataclasses import replace

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
