"""Explicit negatives (label-0 rows: shown and not clicked, rated low) in the BCE loss.

The data stage saves them split like the positives (`explicit_negatives.parquet`, a `split`
column; see `preprocessing.DataPreprocessor.split_explicit_negatives`). With
`training.explicit_negatives` = k > 0, each positive of a BCE member is scored against k
items drawn uniformly (with replacement) from its user's *training* explicit negatives,
label 0, weight `training.explicit_negative_weight`, beside its sampled negatives. They are
drawn with the member's own sampler generator, so each member draws its own and a resumed
run draws what an uninterrupted one would. A user without any gets no such terms (their
weight is 0). Explicit negatives are not drawn from the sampling distribution q, so logQ
correction leaves their logits alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf

__all__ = ["ExplicitNegatives", "explicit_negative_summary"]


class ExplicitNegatives:
    """Each user's training explicit negatives as an in-graph lookup.

    Args:
        frame: the explicit negatives (`user_idx`, `item_idx`, `split`); only the rows of
            `split == "train"` are used.
        history: csr `[num_users, num_items]` of training positives. Rows that are a
            training positive of their user are dropped (the data stage already leaves
            none), and so are items with no training positive: they have no id embedding
            of their own, and pushing the shared out-of-vocabulary one down would teach
            nothing about them.
    """

    def __init__(self, frame: pd.DataFrame, history: sp.csr_matrix):
        history = sp.csr_matrix(history)
        num_users, num_items = history.shape
        train = frame[frame["split"] == "train"] if "split" in frame else frame
        users = train["user_idx"].to_numpy(np.int64)
        items = train["item_idx"].to_numpy(np.int64)
        seen = np.asarray(history.sum(axis=0)).ravel() > 0
        keep = seen[items]
        if len(users):
            keep &= np.asarray(history[users, items]).ravel() == 0
        users, items = users[keep], items[keep]
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        self.num_rows, self.num_users = len(users), int(len(np.unique(users)))
        counts = np.bincount(users, minlength=num_users)
        splits = np.concatenate([[0], np.cumsum(counts)])
        self.row_starts = tf.constant(splits[:-1], tf.int64)
        self.row_lengths = tf.constant(counts, tf.int64)
        # One trailing pad entry: the index a user without explicit negatives points at.
        self.values = tf.constant(np.r_[items, 0].astype(np.int32))
        self.users, self.items = users, items

    @classmethod
    def for_model(cls, data, settings) -> ExplicitNegatives | None:
        """The lookup for `data` (its `explicit_negatives` and `history`) when a BCE member
        of `settings` (`MemberSettings` per member) asks for explicit negatives; else None."""
        frame = getattr(data, "explicit_negatives", None)
        wanted = any(s.explicit_negatives and s.loss == "bce" for s in settings)
        return cls(frame, data.history) if wanted and frame is not None and len(frame) else None

    def sample(self, generator: tf.random.Generator, users: tf.Tensor,
               k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """`k` explicit negatives per user (`users` int `[B]`), drawn with `generator`:
        (`items` int32 `[B, k]`, `valid` bool `[B, k]`, false for a user with none)."""
        users = tf.cast(tf.reshape(users, [-1]), tf.int64)
        lengths = tf.gather(self.row_lengths, users)[:, None]
        u = generator.uniform(tf.stack([tf.size(users), k]), dtype=tf.float32)
        offset = tf.minimum(tf.cast(u * tf.cast(lengths, tf.float32), tf.int64),
                            tf.maximum(lengths - 1, 0))
        valid = tf.broadcast_to(lengths > 0, tf.shape(offset))
        index = tf.where(valid, tf.gather(self.row_starts, users)[:, None] + offset,
                         tf.cast(self.num_rows, tf.int64))
        return tf.gather(self.values, index), valid


def explicit_negative_summary(model, data) -> str:
    """One line: how many explicit negatives the data has and how training uses them."""
    frame = getattr(data, "explicit_negatives", None)
    total = 0 if frame is None else len(frame)
    used = getattr(model, "explicit", None)
    per_member = [s.explicit_negatives if s.loss == "bce" else 0 for s in model.settings]
    if total == 0:
        note = (" (training.explicit_negatives is set, but there are none to draw)"
                if any(per_member) else "")
        return f"explicit negatives: none in the data{note}"
    by_split = frame["split"].value_counts().to_dict()
    counts = ", ".join(f"{name} {by_split.get(name, 0):,}"
                       for name in ("train", "validation", "test"))
    head = f"explicit negatives (label 0): {total:,} ({counts})"
    if not any(per_member) or used is None:
        return head + "; not used in training (training.explicit_negatives = 0)"
    train_users = data.train["user_idx"].to_numpy()
    covered = np.isin(train_users, used.users)
    return (head + f"; training draws from {used.num_rows:,} of them ({used.num_users:,} "
            f"users): {'/'.join(str(k) for k in per_member)} per positive "
            f"(weight {model.settings[0].explicit_negative_weight:g}) for the "
            f"{int(covered.sum()):,} of {len(train_users):,} training positives whose user "
            f"has some: {int(covered.sum()) * sum(per_member):,} explicit-negative terms "
            "per epoch")
