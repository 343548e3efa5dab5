"""One real training batch laid out: what the BCE over sampled negatives computes.

`bce_batch_breakdown(model, data)` takes a batch of training pairs, draws the negatives the
model's own sampler draws for it, scores every (user, item) pair with the towers and returns
each pair's BCE term, the batch loss built from them, and the loss the model itself computes
on the same batch with the same negatives (`losses.member_loss`), so a notebook can show that
the two agree. The sampler's random state is put back afterwards: looking at a batch does not
change what training draws. Towers run in inference mode (no dropout, no history dropout), so
the numbers are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf

from twotower_utils.model import losses

__all__ = ["BatchBreakdown", "bce_batch_breakdown"]


@dataclass
class BatchBreakdown:
    """A BCE batch, pair by pair.

    `pairs`: one row per scored pair (`user_id`, `item_id`, `kind` positive / negative /
    explicit negative (a label-0 row of the user, `training.explicit_negatives`), `label`,
    `logit`, `probability`, `bce`, `counted`: 0 for a negative the sampler could not draw
    outside the user's positives or an explicit one of a user who has none, `weight`:
    `training.explicit_negative_weight` for explicit negatives, else 1);
    `bce_mean` = sum of counted, weighted BCE terms / batch size;
    `l2` the L2 term (`model.l2_regularization` x the mean squared norms of the batch's user
    embeddings and of every item embedding it scores); `loss` = `bce_mean + l2`;
    `model_loss` what `member_loss` returns on the same batch and negatives;
    `negatives_hit_positives` how many counted negatives are among their user's training
    positives (0 by construction).
    """

    pairs: pd.DataFrame
    batch_size: int
    num_negatives: int
    bce_mean: float
    l2: float
    loss: float
    model_loss: float
    negatives_hit_positives: int
    member: int
    explicit_negatives: int = 0  # per positive
    explicit_counted: int = 0  # drawn for users who have some

    @property
    def matches(self) -> bool:
        """True when the loss rebuilt from the pairs equals the model's (float32 tolerance)."""
        return bool(np.isclose(self.loss, self.model_loss, rtol=1e-5, atol=1e-5))

    def users(self, count: int = 3) -> pd.DataFrame:
        """The pairs of the batch's first `count` positives: each positive and its negatives."""
        first = self.pairs["row"].drop_duplicates().iloc[:count]
        return self.pairs[self.pairs["row"].isin(first)].drop(columns="row").reset_index(
            drop=True)

    def summary(self) -> pd.DataFrame:
        """The batch loss, term by term, beside the model's own value."""
        rows = [("positive pairs in the batch", self.batch_size),
                ("negatives per positive", self.num_negatives),
                ("explicit negatives per positive (counted in the batch)",
                 f"{self.explicit_negatives} ({self.explicit_counted})"),
                ("mean BCE per positive (its term + its negatives' terms)",
                 f"{self.bce_mean:.6f}"),
                ("L2 on the batch's embeddings", f"{self.l2:.6f}"),
                ("batch loss rebuilt from the pairs", f"{self.loss:.6f}"),
                ("batch loss computed by the model", f"{self.model_loss:.6f}"),
                ("equal", "yes" if self.matches else "NO"),
                ("negatives that are a positive of their user", self.negatives_hit_positives)]
        return pd.DataFrame(rows, columns=["quantity", "value"]).set_index("quantity")


def bce_batch_breakdown(model, data, batch_size: int = 256, member: int | None = None,
                        seed: int = 0) -> BatchBreakdown:
    """Lay out one BCE batch of `model` (a `TwoTowerModel`) on `data` (its `ProcessedData`).

    Takes `batch_size` training pairs chosen by `seed`, and the ensemble member to show
    (default: the first one trained with BCE). Returns a `BatchBreakdown`; raises ValueError
    when no member uses plain BCE over sampled negatives (the only loss laid out here).
    """
    member = _bce_member(model) if member is None else member
    settings, sampler = model.settings[member], model.samplers[member]
    order = np.random.default_rng(seed).permutation(len(data.train))[:batch_size]
    users = tf.constant(data.train["user_idx"].to_numpy()[order], tf.int32)
    items = tf.constant(data.train["item_idx"].to_numpy()[order], tf.int32)
    state = sampler.generator.state.numpy()
    negatives, valid = sampler.sample(users, settings.num_negatives)
    # Drawn after the sampled negatives, as in the model's loss.
    explicit, explicit_valid = losses.explicit_negatives(model, member, users)
    sampler.generator.state.assign(state)  # the model's loss draws the same negatives
    model_loss = float(losses.member_loss(model, member, users, items, training=False))
    sampler.generator.state.assign(state)  # and training draws what it would have drawn
    which = None if model.members == 1 else member
    user_vec = model.embed_users(users, member=which, exclude_items=items
                                 if settings.history_leave_one_out else None)
    scored = tf.concat([items[:, None], negatives, explicit], axis=1)  # [B, 1 + k + e]
    k, e = settings.num_negatives, losses.explicit_count(model, member)
    item_vec = tf.reshape(model.embed_items(tf.reshape(scored, [-1]), member=which),
                          [len(order), scored.shape[1], -1])
    logits = tf.einsum("bd,bkd->bk", user_vec, item_vec) / settings.temperature
    if settings.logq_correction:
        log_kq = tf.gather(sampler.log_q, scored[:, :1 + k]) + tf.math.log(float(max(k, 1)))
        # Explicit negatives are not drawn from q: their logits stay as they are.
        logits -= tf.pad(log_kq, [[0, 0], [0, e]])
    labels = np.zeros(scored.shape, np.float32)
    labels[:, 0] = 1.0
    counted = np.concatenate([np.ones((len(order), 1), np.float32),
                              valid.numpy().astype(np.float32),
                              explicit_valid.numpy().astype(np.float32)], axis=1)
    weight = np.ones(scored.shape, np.float32)
    weight[:, 1 + k:] = settings.explicit_negative_weight
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels, logits).numpy()
    bce_mean = float((bce * counted * weight).sum() / len(order))
    # As in the model: the mean squared norm over every item the batch scores.
    l2 = float(losses.l2_penalty(settings.l2, user_vec,
                                 tf.reshape(tf.reduce_sum(item_vec**2, 2), [-1])))
    hits = sampler.is_positive(tf.repeat(users, settings.num_negatives),
                               tf.reshape(negatives, [-1])).numpy()
    user_ids = np.asarray(data.user_vocab, dtype=object)
    item_ids = np.asarray(data.item_vocab, dtype=object)
    width = scored.shape[1]
    pairs = pd.DataFrame({
        "row": np.repeat(np.arange(len(order)), width),
        "user_id": user_ids[np.repeat(users.numpy(), width) - 1],
        "item_id": item_ids[scored.numpy().ravel() - 1],
        "kind": np.tile(["positive"] + ["negative"] * k + ["explicit negative"] * e,
                        len(order)),
        "label": labels.ravel().astype(int),
        "logit": logits.numpy().ravel(),
        "probability": tf.sigmoid(logits).numpy().ravel(),
        "bce": bce.ravel(),
        "counted": counted.ravel().astype(int),
        "weight": weight.ravel(),
    })
    explicit_hits = sampler.is_positive(tf.repeat(users, e), tf.reshape(explicit, [-1])).numpy()
    return BatchBreakdown(pairs, len(order), k, bce_mean, l2, bce_mean + l2, model_loss,
                          int((hits & valid.numpy().ravel()).sum())
                          + int((explicit_hits & explicit_valid.numpy().ravel()).sum()),
                          member, e, int(counted[:, 1 + k:].sum()))


def _bce_member(model) -> int:
    for member, settings in enumerate(model.settings):
        if settings.loss == "bce" and not settings.in_batch_negatives:
            return member
    raise ValueError("no ensemble member trains with training.loss = 'bce' over sampled "
                     "negatives alone; the batch breakdown lays out that loss only")
