"""The training losses of `TwoTowerModel`, as functions of the model (`training.loss`).

`compute_loss` sums one loss per ensemble member, each computed by `member_loss` on that
member's own batch (a `[members, B]` batch gives member m row m; a `[B]` batch is every
member's), with that member's settings (`model.settings[m]`: loss, negatives, logQ,
temperature, L2) and sampler (`model.samplers[m]`: its own negatives and history dropout), on
that member's embeddings only: `bce` (each positive against its own `num_negatives` sampled
negatives, optional logQ and in-batch negatives), `sampled_softmax` (each positive against
`softmax_negatives` items shared by the batch, all training items when 0) and `softmax`
(TFRS's in-batch `Retrieval` loss, computed by `in_batch_softmax`); plus `l2_penalty`.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["compute_loss", "explicit_count", "explicit_negatives", "in_batch_softmax",
           "l2_penalty", "member_loss", "sampled_softmax_loss"]

MIN_FLOAT = float(tf.float32.min) / 100.0  # TFRS's masked-logit value


def compute_loss(model, inputs: dict[str, tf.Tensor], training: bool = False,
                 active: tf.Tensor | None = None) -> tf.Tensor:
    """Scalar loss of a batch `{"user_idx": int, "item_idx": int}`, `[B]` or `[members, B]`.

    The sum over members of `member_loss` (member m on row m of a `[members, B]` batch, on
    the whole batch of a `[B]` one). `active` (bool `[members]`, default all) leaves the
    members marked false out: their loss is not computed at all (0), so a member that has
    stopped training costs nothing in the step.
    """
    users = tf.cast(inputs["user_idx"], tf.int32)
    items = tf.cast(inputs["item_idx"], tf.int32)
    per_member = users.shape.rank == 2
    parts = []
    for member in range(model.members):
        def loss(member=member):
            return member_loss(model, member, users[member] if per_member else users,
                               items[member] if per_member else items, training)
        parts.append(loss() if active is None
                     else tf.cond(active[member], loss, lambda: tf.constant(0.0)))
    return tf.add_n(parts)


def member_loss(model, member: int, users: tf.Tensor, items: tf.Tensor,
                training: bool = False) -> tf.Tensor:
    """Member `member`'s loss on positives (`users`, `items`: int `[B]`).

    BCE: per positive, the binary cross-entropy of the positive (label 1) plus that of
    each of its `num_negatives` sampled negatives, of its `explicit_negatives` explicit
    negatives (label-0 rows of its user, weighted by `explicit_negative_weight`;
    `twotower_utils.model.explicit_negatives`) and, if enabled, of the other rows'
    positives (label 0), averaged over the batch's positives; plus
    `l2_regularization` * the mean squared norm of the batch's user and item embeddings.
    Sampled softmax: see `sampled_softmax_loss`. Softmax: TFRS's in-batch retrieval loss,
    averaged over positives, plus the same L2.
    """
    settings, sampler = model.settings[member], model.samplers[member]
    # A single model's embeddings are its only member's: no slicing needed.
    which = None if model.members == 1 else member
    batch = tf.size(users)
    user_vec = model.embed_users(
        users, training=training, member=which,
        exclude_items=items if settings.history_leave_one_out else None)
    if settings.loss == "softmax":
        # As in the BCE loss, the item tower runs once per distinct item.
        unique_items, where = tf.unique(items)
        item_vec = tf.gather(model.embed_items(unique_items, training=training, member=which),
                             where)
        # Another row's item that is also this user's positive is not a negative.
        mask = tf.logical_not(sampler.positive_matrix(users, items))
        mask |= tf.eye(batch, dtype=tf.bool)
        loss = in_batch_softmax(user_vec, item_vec, settings.temperature, mask,
                                tf.gather(sampler.log_freq, items)
                                if settings.logq_correction else None)
        return loss / tf.cast(batch, tf.float32) + l2_penalty(
            settings.l2, user_vec, tf.reduce_sum(item_vec**2, 1))
    if settings.loss == "sampled_softmax":
        return sampled_softmax_loss(model, member, users, items, user_vec, training)
    k = settings.num_negatives
    negatives, valid = sampler.sample(users, k)
    explicit, explicit_valid = explicit_negatives(model, member, users)
    all_items = tf.concat([items, tf.reshape(negatives, [-1]), tf.reshape(explicit, [-1])],
                          axis=0)
    # The tower runs once per distinct item: a batch's positives and negatives repeat
    # popular items many times (and cannot exceed the catalogue).
    unique_items, where = tf.unique(all_items)
    unique_vec = model.embed_items(unique_items, training=training, member=which)
    # Gathering each part separately: slicing one gathered tensor would cost a full-size
    # zero-padded gradient per slice.
    pos_vec = tf.gather(unique_vec, where[:batch])
    neg_vec = tf.reshape(tf.gather(unique_vec, where[batch:batch * (1 + k)]), [batch, k, -1])
    temperature = settings.temperature
    logits = [
        tf.reduce_sum(user_vec * pos_vec, axis=1, keepdims=True) / temperature,
        tf.einsum("bd,bkd->bk", user_vec, neg_vec) / temperature,
    ]
    labels = [tf.ones_like(logits[0]), tf.zeros_like(logits[1])]
    weights = [tf.ones([batch, 1]), tf.cast(valid, tf.float32)]
    if settings.logq_correction:
        # With negatives drawn from q, BCE's optimal logit is log p(i|u) - log(k q(i));
        # subtracting log(k q(i)) in training leaves the score itself ~ log p(i|u).
        log_kq = tf.gather(sampler.log_q, tf.concat([items[:, None], negatives], 1))
        log_kq += tf.math.log(float(max(k, 1)))
        logits = [logits[0] - log_kq[:, :1], logits[1] - log_kq[:, 1:]]
    if explicit_count(model, member):
        # Not drawn from q: no logQ correction for them.
        explicit_vec = tf.reshape(tf.gather(unique_vec, where[batch * (1 + k):]),
                                  [batch, explicit_count(model, member), -1])
        logits.append(tf.einsum("bd,bkd->bk", user_vec, explicit_vec) / temperature)
        labels.append(tf.zeros_like(logits[-1]))
        weights.append(tf.cast(explicit_valid, tf.float32) * settings.explicit_negative_weight)
    if settings.in_batch_negatives:
        scores = tf.matmul(user_vec, pos_vec, transpose_b=True) / temperature
        if settings.logq_correction:
            # In-batch items arrive with their training frequency.
            log_bq = tf.gather(sampler.log_freq, items)
            scores -= log_bq[None, :] + tf.math.log(tf.cast(batch, tf.float32))
        keep = tf.logical_not(sampler.positive_matrix(users, items))
        logits.append(scores)
        labels.append(tf.zeros_like(scores))
        weights.append(tf.cast(keep, tf.float32))
    logits = tf.concat(logits, axis=1)
    weights = tf.concat(weights, axis=1)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.concat(labels, axis=1), logits)
    loss = tf.reduce_sum(bce * weights) / tf.cast(batch, tf.float32)
    return loss + l2_penalty(settings.l2, user_vec,
                             tf.gather(tf.reduce_sum(unique_vec**2, 1), where))


def explicit_negatives(model, member: int, users: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Member `member`'s explicit negatives for a batch's positives (`users` int `[B]`).

    `settings.explicit_negatives` items per positive drawn from its user's training
    explicit negatives with the member's sampler generator (after its sampled negatives):
    `(items int32 [B, k], valid bool [B, k])`, k = 0 when off or the data has none.
    """
    k = explicit_count(model, member)
    if not k:
        empty = tf.zeros([tf.size(users), 0], tf.int32)
        return empty, tf.zeros([tf.size(users), 0], tf.bool)
    return model.explicit.sample(model.samplers[member].generator, users, k)


def explicit_count(model, member: int) -> int:
    """Explicit negatives per positive member `member` trains with (0: off or none in the
    data, or a loss other than BCE)."""
    settings = model.settings[member]
    if getattr(model, "explicit", None) is None or settings.loss != "bce":
        return 0
    return int(settings.explicit_negatives)


def in_batch_softmax(user_vec: tf.Tensor, item_vec: tf.Tensor, temperature: float,
                     mask: tf.Tensor, log_q: tf.Tensor | None = None) -> tf.Tensor:
    """TFRS's in-batch `Retrieval` loss (summed over rows), computed directly.

    Row b's softmax over the batch's items with its own item (the diagonal) as the label;
    `mask` `[B, B]` false where an item leaves row b's softmax; `log_q` (`[B]`) is the log
    sampling probability each candidate's logit drops (logQ correction). Equal to
    `tfrs.tasks.Retrieval(temperature=...)` with a summing categorical cross-entropy, but
    without its `[B, B]` label matrix and per-element cross-entropy.
    """
    scores = tf.matmul(user_vec, item_vec, transpose_b=True) / temperature
    if log_q is not None:
        # TFRS clips the probability at 1e-6.
        scores -= tf.maximum(log_q, tf.math.log(1e-6))[None, :]
    scores = tf.where(mask, scores, tf.fill(tf.shape(scores), MIN_FLOAT))
    return tf.reduce_sum(tf.reduce_logsumexp(scores, axis=1) - tf.linalg.diag_part(scores))


def sampled_softmax_loss(model, member: int, users: tf.Tensor, items: tf.Tensor,
                         user_vec: tf.Tensor, training: bool) -> tf.Tensor:
    """Softmax of each positive against `softmax_negatives` items shared by the batch.

    The shared items are drawn from the member's sampling distribution every step, or are
    the whole training catalogue when `softmax_negatives` is 0 or reaches its size (an
    exact softmax, no logQ needed). A shared item that is one of the row's user's training
    positives leaves that row's softmax. With `logq_correction` every logit drops log(k q(i)),
    the expected count of i among the draws; in-batch negatives as in the BCE loss.
    """
    settings, sampler = model.settings[member], model.samplers[member]
    which = None if model.members == 1 else member
    batch = tf.size(users)
    pool = sampler.pool
    count = settings.softmax_negatives
    full = count == 0 or count >= int(pool.shape[0])
    shared = pool if full else sampler.draw([count])
    unique_items, where = tf.unique(tf.concat([items, shared], axis=0))
    unique_vec = model.embed_items(unique_items, training=training, member=which)
    pos_vec = tf.gather(unique_vec, where[:batch])
    shared_vec = tf.gather(unique_vec, where[batch:])
    temperature = settings.temperature
    logits = [
        tf.reduce_sum(user_vec * pos_vec, axis=1, keepdims=True) / temperature,
        tf.matmul(user_vec, shared_vec, transpose_b=True) / temperature,
    ]
    keep = [
        tf.ones([batch, 1], tf.bool),
        tf.logical_not(sampler.positive_matrix(users, shared)),
    ]
    if settings.logq_correction and not full:
        log_k = tf.math.log(float(count))
        logits[0] -= (tf.gather(sampler.log_q, items) + log_k)[:, None]
        logits[1] -= (tf.gather(sampler.log_q, shared) + log_k)[None, :]
    if settings.in_batch_negatives:
        scores = tf.matmul(user_vec, pos_vec, transpose_b=True) / temperature
        if settings.logq_correction:
            scores -= (tf.gather(sampler.log_freq, items)
                       + tf.math.log(tf.cast(batch, tf.float32)))[None, :]
        logits.append(scores)
        keep.append(tf.logical_not(sampler.positive_matrix(users, items)))
    logits = tf.concat(logits, axis=1)
    keep = tf.concat(keep, axis=1)
    logits = tf.where(keep, logits, tf.fill(tf.shape(logits), -1e9))
    loss = -tf.reduce_sum(tf.nn.log_softmax(logits, axis=1)[:, 0])
    return loss / tf.cast(batch, tf.float32) + l2_penalty(
        settings.l2, user_vec, tf.gather(tf.reduce_sum(unique_vec**2, 1), where))


def l2_penalty(l2: float, user_vec: tf.Tensor, item_sq_norms: tf.Tensor) -> tf.Tensor:
    """`l2` * (mean squared norm of the batch's user embeddings + mean of the item
    embeddings' squared norms)."""
    # Penalising the batch's outputs (not whole tables) keeps a step's cost independent
    # of the catalogue size; each item counts once per occurrence in the batch.
    if l2 == 0.0:
        return tf.constant(0.0)
    return l2 * (tf.reduce_mean(tf.reduce_sum(user_vec**2, 1)) + tf.reduce_mean(item_sq_norms))
