"""The negative sampler training draws from, inside the graph: `PairSampler`.

Negatives for a user are drawn afresh every step, uniformly or by popularity^alpha over the
items seen in training, and redrawn while they hit one of that user's training positives
(`MAX_REJECTION_ROUNDS` rounds); the positive-pair lookup is a dense users x items table up
to `DENSE_MASK_MAX_CELLS` cells and a hash table of pair keys beyond. The sampler also holds
the training history as a ragged tensor (`ragged_rows`) and the history-dropout masks, and
its random generator is checkpointed with the model, so a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

__all__ = ["DENSE_MASK_MAX_CELLS", "MAX_REJECTION_ROUNDS", "PairSampler", "ragged_rows"]

MAX_REJECTION_ROUNDS = 32  # P(a draw still collides) <= share_of_positives ** 32
# Positive-pair lookups use a dense [users x items] bool table up to this many cells (64 MB),
# and a hash table of pair keys (memory O(positives)) beyond it.
DENSE_MASK_MAX_CELLS = 64_000_000


class PairSampler(tf.Module):
    """The training positives as an in-graph lookup, and the seeded negative sampler.

    Args:
        history: csr `[num_users, num_items]` of training positives.
        distribution: "uniform" or "popularity" (count ** `alpha`), over the items that have
            at least one training positive.
        alpha: the popularity exponent.
        seed: seed of the generator (its state is checkpointed with the model).
        shared: a sampler over the same history whose positives' lookups this one reuses
            (an ensemble member's: its own generator and distribution, the same positives).

    Attributes: `history` (ragged rows of item indices), `log_q` (log sampling probability
    per item) and `log_freq` (log training frequency per item), all constants.
    """

    def __init__(self, history: sp.csr_matrix, distribution: str, alpha: float, seed: int,
                 shared: PairSampler | None = None):
        super().__init__(name="pair_sampler")
        history = sp.csr_matrix(history)
        num_users, num_items = history.shape
        counts = np.bincount(history.indices, minlength=num_items).astype(np.float64)
        counts[0] = 0.0
        pool = np.flatnonzero(counts > 0).astype(np.int32)
        if len(pool) == 0:
            raise ValueError("the training history is empty: no items to sample negatives from")
        weights = counts[pool] ** alpha if distribution == "popularity" else np.ones(len(pool))
        probs = weights / weights.sum()
        q = np.zeros(num_items)
        q[pool] = probs
        self.num_items, self.uniform = num_items, distribution == "uniform"
        self.generator = tf.random.Generator.from_seed(seed)
        self.pool, self.cdf = tf.constant(pool), tf.constant(np.cumsum(probs))
        self.log_q = tf.constant(np.log(np.maximum(q, 1e-12)), tf.float32)
        if shared is not None:
            # Another member's sampler over the same history: its lookups are reused.
            self.dense_mask, self.positive_table = shared.dense_mask, shared.positive_table
            self.history, self.log_freq = shared.history, shared.log_freq
            return
        rows = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(history.indptr))
        keys = np.unique(rows * num_items + history.indices)
        self.dense_mask = self.positive_table = None
        if num_users * num_items <= DENSE_MASK_MAX_CELLS:
            dense = np.zeros(num_users * num_items, dtype=bool)
            dense[keys] = True
            self.dense_mask = tf.constant(dense.reshape(num_users, num_items))
        else:
            # A hash lookup costs the same at any number of positives; a binary search over
            # the sorted keys grew with it (41 ms per 17K lookups at 7.5M keys vs 0.7 ms).
            self.positive_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys, tf.int64), tf.ones([len(keys)], tf.int32)), 0)
        self.history = ragged_rows(history)
        self.log_freq = tf.constant(np.log(np.maximum(counts / counts.sum(), 1e-12)),
                                    tf.float32)

    def is_positive(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """Bool tensor: is (user, item) a training positive? `users`/`items` broadcast."""
        keys = tf.cast(users, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        if self.dense_mask is not None:
            return tf.gather(tf.reshape(self.dense_mask, [-1]), keys)
        return self.positive_table.lookup(keys) > 0

    def positive_matrix(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """`[B, C]` bool: is (users[b], items[c]) a training positive? (int `[B]`, `[C]`)."""
        if self.dense_mask is None:
            return self.is_positive(users[:, None], items[None, :])
        # Rows of the distinct users, then their columns: a million scattered one-byte
        # lookups (a 1,024-pair batch against itself) cost ten times as much.
        unique, where = tf.unique(users)
        rows = tf.gather(tf.gather(self.dense_mask, unique), items, axis=1)
        return tf.gather(rows, where)

    def sample(self, users: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Draw `k` negatives per user: (`items` int32 `[B, k]`, `valid` bool `[B, k]`).

        Draws colliding with the user's training positives are redrawn (up to
        `MAX_REJECTION_ROUNDS` rounds); a draw still colliding after that (only for users
        who have nearly every item) is marked invalid, to be left out of the loss.
        """
        users = tf.reshape(users, [-1])
        items = self.draw(tf.stack([tf.size(users), k]))
        bad = self.is_positive(users[:, None], items)

        def redraw(step, items, bad):
            # Only the colliding draws are redrawn, so each round costs what is left.
            where = tf.where(bad)
            fresh = self.draw(tf.shape(where)[:1])
            still = self.is_positive(tf.gather(users, where[:, 0]), fresh)
            return (step + 1, tf.tensor_scatter_nd_update(items, where, fresh),
                    tf.tensor_scatter_nd_update(bad, where, still))

        _, items, bad = tf.while_loop(
            lambda step, _, bad: (step < MAX_REJECTION_ROUNDS) & tf.reduce_any(bad),
            redraw, (tf.constant(0), items, bad))
        return items, tf.logical_not(bad)

    def draw(self, shape) -> tf.Tensor:
        """Items (int32 tensor of `shape`) drawn with replacement from the sampling
        distribution, with no regard to any user's positives."""
        if self.uniform:
            j = self.generator.uniform(shape, 0, tf.size(self.pool), dtype=tf.int32)
        else:
            u = tf.reshape(self.generator.uniform(shape, dtype=tf.float64), [-1])
            j = tf.reshape(tf.searchsorted(self.cdf, u, side="right"), shape)
            j = tf.minimum(j, tf.size(self.pool) - 1)
        return tf.gather(self.pool, j)

    def step_seed(self) -> tf.Tensor:
        """A fresh int64 seed for `kept`, drawn from the checkpointed generator."""
        return self.generator.uniform([], 0, 2**31 - 1, dtype=tf.int64)

    @staticmethod
    def kept(users: tf.Tensor, items: tf.Tensor, seed: tf.Tensor, rate: float) -> tf.Tensor:
        """History dropout: is (user, item) kept this step (probability 1 - `rate`)?

        A hash of (user, item, seed) rather than a random draw per history entry, so the
        draw for a given pair can be recomputed elsewhere in the step (the target's own).
        """
        b = tf.bitwise
        mask = tf.constant(0xFFFFFFFF, tf.int64)
        x = b.bitwise_and(tf.cast(users, tf.int64) * 0x9E3779B1
                          + tf.cast(items, tf.int64) * 0x85EBCA77 + seed, mask)
        for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            x = b.bitwise_and(b.bitwise_xor(x, b.right_shift(x, shift)) * factor, mask)
        x = b.bitwise_xor(x, b.right_shift(x, 16))
        return tf.cast(x, tf.float64) >= rate * 2.0**32


def ragged_rows(matrix: sp.csr_matrix, rows: np.ndarray | None = None) -> tf.RaggedTensor:
    """Rows of a csr matrix as a `tf.RaggedTensor` of int32 column indices ([rows, None])."""
    matrix = sp.csr_matrix(matrix)
    if rows is not None:
        matrix = matrix[np.asarray(rows)]
    return tf.RaggedTensor.from_row_splits(
        tf.constant(matrix.indices.astype(np.int32)),
        tf.constant(matrix.indptr.astype(np.int64)),
        validate=False,
    )
