"""One side of the two-tower model: `Tower` (ids, features and history -> embeddings).

`Tower` is one side (user or item): an id embedding, the side's features (encoded by its own
Keras preprocessing layers, `FeatureEncoding`, then categorical embeddings, standardised
numerics, mean-pooled multi-hot lists) and, for users,
the mean embedding of their training items; then `Dense -> BatchNorm -> activation ->
Dropout` per hidden layer and a projection to the shared embedding size (L2-normalised for
cosine similarity). With `ensemble_size` K > 1 a tower holds K members that share nothing
(every table K slices wide, each member its own layers) and returns their embeddings side by
side. `TwoTowerModel` (`twotower_utils.model.two_tower`) pairs a user and an item tower.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from twotower_utils.model.encoding import FeatureEncoding

__all__ = ["CheckpointedDropout", "Tower", "feature_dim"]


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

    `encoding` (a `FeatureEncoding`) turns raw feature values into the codes below; `serve`
    runs it and the tower in one call, as the exported SavedModel does.

    Call with a dict: `id` int `[B]` (embedding row), one entry per encoded feature (int `[B]`
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
        self.encoding = FeatureEncoding(self.specs, name=f"{side}_features")
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

    def serve(self, inputs: dict[str, Any]) -> tf.Tensor:
        """Embed raw rows (`raw_signature`): the features go through `encoding` first.
        Inference only (no dropout); returns float32 `[B, output_dim]`."""
        names = {spec["name"] for spec in self.specs}
        encoded = self.encoding({name: inputs[name] for name in names}) if names else {}
        rest = {key: value for key, value in inputs.items() if key not in names}
        return self({**rest, **encoded}, training=False)

    def raw_signature(self) -> dict[str, tf.TensorSpec]:
        """TensorSpecs of `serve`'s inputs: `id` int32 `[B]` (embedding row), each raw
        feature (`FeatureEncoding.signature`) and, with history, `history` int32 `[B, L]`
        (item indices padded with 0)."""
        signature = {"id": tf.TensorSpec([None], tf.int32, name="id"),
                     **self.encoding.signature()}
        if self.history_embedding is not None:
            signature["history"] = tf.TensorSpec([None, None], tf.int32, name="history")
        return signature

    @property
    def output_dim(self) -> int:
        """Size of the embeddings this tower returns (members x each member's size)."""
        return self.members * int(self.projection.units if self.projection is not None
                                  else self.hidden[-1][0].units)
