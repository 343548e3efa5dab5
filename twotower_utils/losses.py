"""The training losses of `TwoTowerModel`, as functions of the model (`training.loss`).

`compute_loss` embeds the batch's users and dispatches: `bce` (each positive against its own
`num_negatives` sampled negatives, optional logQ and in-batch negatives), `sampled_softmax`
(each positive against `softmax_negatives` items shared by the batch, all training items
when 0) and `softmax` (TFRS's in-batch `Retrieval` task). Every loss is computed per ensemble
member (a member's logits use only its slice of the embeddings) and summed over members, plus
`l2_penalty`. The model provides its towers' embeddings, its `sampler` (`PairSampler`) and its
settings (`num_negatives`, `temperature`, `logq_correction`, ...).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

__all__ = ["compute_loss", "l2_penalty", "per_member", "sampled_softmax_loss"]


def compute_loss(model, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Scalar loss of a batch `{"user_idx": int [B], "item_idx": int [B]}`.

    BCE: per positive, the binary cross-entropy of the positive (label 1) plus that of
    each of its `num_negatives` sampled negatives and, if enabled, of the other rows'
    positives (label 0), averaged over the batch's positives; plus
    `l2_regularization` * the mean squared norm of the batch's user and item embeddings.
    Sampled softmax: see `sampled_softmax_loss`. Softmax: TFRS's in-batch retrieval loss,
    averaged over positives, plus the same L2. With ensemble members, summed over members.
    """
    users = tf.cast(inputs["user_idx"], tf.int32)
    items = tf.cast(inputs["item_idx"], tf.int32)
    batch = tf.size(users)
    user_vec = model.embed_users(
        users,
        training=training,
        exclude_items=items if model.options["history_leave_one_out"] else None,
    )
    if model.loss_name == "softmax":
        item_vec = model.embed_items(items, training=training)
        # Another row's item that is also this user's positive is not a negative.
        mask = tf.logical_not(model.sampler.is_positive(users[:, None], items[None, :]))
        mask |= tf.eye(batch, dtype=tf.bool)
        log_q = tf.gather(model.sampler.log_freq, items) if model.logq_correction else None
        loss = tf.add_n(
            [
                model.task(
                    member_user,
                    member_item,
                    compute_metrics=False,
                    score_mask=mask,
                    candidate_sampling_probability=None if log_q is None else tf.exp(log_q),
                )
                for member_user, member_item in zip(
                    tf.split(user_vec, model.members, axis=1),
                    tf.split(item_vec, model.members, axis=1),
                )
            ]
        )
        return loss / tf.cast(batch, tf.float32) + l2_penalty(
            model, user_vec, tf.reduce_sum(item_vec**2, 1)
        )
    if model.loss_name == "sampled_softmax":
        return sampled_softmax_loss(model, users, items, user_vec, training)
    k = model.num_negatives
    negatives, valid = model.sampler.sample(users, k)
    all_items = tf.concat([items, tf.reshape(negatives, [-1])], axis=0)
    # The tower runs once per distinct item: a batch's positives and negatives repeat
    # popular items many times (and cannot exceed the catalogue).
    unique_items, where = tf.unique(all_items)
    unique_vec = model.embed_items(unique_items, training=training)
    # Gathering each part separately: slicing one gathered tensor would cost a full-size
    # zero-padded gradient per slice.
    pos_vec = tf.gather(unique_vec, where[:batch])
    neg_vec = tf.gather(unique_vec, where[batch:])
    # Logits per ensemble member: [B, members, candidates]; masks broadcast over members.
    user_m, pos_m = per_member(model, user_vec), per_member(model, pos_vec)
    neg_m = tf.reshape(neg_vec, [batch, k, model.members, -1])
    temperature = model.temperature
    logits = [
        tf.reduce_sum(user_m * pos_m, axis=2)[..., None] / temperature,
        tf.einsum("bmd,bkmd->bmk", user_m, neg_m) / temperature,
    ]
    labels = [tf.ones_like(logits[0]), tf.zeros_like(logits[1])]
    weights = [tf.ones([batch, 1, 1]), tf.cast(valid, tf.float32)[:, None, :]]
    if model.logq_correction:
        # With negatives drawn from q, BCE's optimal logit is log p(i|u) - log(k q(i));
        # subtracting log(k q(i)) in training leaves the score itself ~ log p(i|u).
        log_kq = tf.gather(model.sampler.log_q, tf.concat([items[:, None], negatives], 1))
        log_kq = (log_kq + tf.math.log(float(max(k, 1))))[:, None, :]
        logits = [logits[0] - log_kq[..., :1], logits[1] - log_kq[..., 1:]]
    if model.in_batch_negatives:
        scores = tf.einsum("bmd,cmd->bmc", user_m, pos_m) / temperature
        if model.logq_correction:
            # In-batch items arrive with their training frequency.
            log_bq = tf.gather(model.sampler.log_freq, items)
            scores -= log_bq[None, None, :] + tf.math.log(tf.cast(batch, tf.float32))
        keep = tf.logical_not(model.sampler.is_positive(users[:, None], items[None, :]))
        logits.append(scores)
        labels.append(tf.zeros_like(scores))
        weights.append(tf.cast(keep, tf.float32)[:, None, :])
    logits = tf.concat(logits, axis=2)
    weights = tf.concat(weights, axis=2)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.concat(labels, axis=2), logits)
    loss = tf.reduce_sum(bce * weights) / tf.cast(batch, tf.float32)
    return loss + l2_penalty(model, user_vec, tf.gather(tf.reduce_sum(unique_vec**2, 1), where))


def per_member(model, vectors: tf.Tensor) -> tf.Tensor:
    """`[N, members * d]` -> `[N, members, d]`: each ensemble member's own embedding."""
    return tf.reshape(vectors, [tf.shape(vectors)[0], model.members, -1])


def sampled_softmax_loss(
    model, users: tf.Tensor, items: tf.Tensor, user_vec: tf.Tensor, training: bool
) -> tf.Tensor:
    """Softmax of each positive against `softmax_negatives` items shared by the batch.

    The shared items are drawn from the sampling distribution every step, or are the
    whole training catalogue when `softmax_negatives` is 0 or reaches its size (an exact
    softmax, no logQ needed). A shared item that is one of the row's user's training positives
    leaves that row's softmax. With `logq_correction` every logit drops log(k q(i)), the
    expected count of i among the draws; in-batch negatives as in the BCE loss. Each
    ensemble member has its own softmax; their losses add up.
    """
    batch = tf.size(users)
    pool = model.sampler.pool
    count = model.softmax_negatives
    full = count == 0 or count >= int(pool.shape[0])
    shared = pool if full else model.sampler.draw([count])
    unique_items, where = tf.unique(tf.concat([items, shared], axis=0))
    unique_vec = model.embed_items(unique_items, training=training)
    pos_vec = tf.gather(unique_vec, where[:batch])
    shared_vec = tf.gather(unique_vec, where[batch:])
    user_m, pos_m = per_member(model, user_vec), per_member(model, pos_vec)
    temperature = model.temperature
    logits = [
        tf.reduce_sum(user_m * pos_m, axis=2)[..., None] / temperature,
        tf.einsum("bmd,smd->bms", user_m, per_member(model, shared_vec)) / temperature,
    ]
    keep = [
        tf.ones([batch, 1, 1], tf.bool),
        tf.logical_not(model.sampler.is_positive(users[:, None], shared[None, :]))[:, None, :],
    ]
    if model.logq_correction and not full:
        log_k = tf.math.log(float(count))
        logits[0] -= (tf.gather(model.sampler.log_q, items) + log_k)[:, None, None]
        logits[1] -= (tf.gather(model.sampler.log_q, shared) + log_k)[None, None, :]
    if model.in_batch_negatives:
        scores = tf.einsum("bmd,cmd->bmc", user_m, pos_m) / temperature
        if model.logq_correction:
            scores -= (
                tf.gather(model.sampler.log_freq, items) + tf.math.log(tf.cast(batch, tf.float32))
            )[None, None, :]
        logits.append(scores)
        keep.append(
            tf.logical_not(model.sampler.is_positive(users[:, None], items[None, :]))[:, None, :]
        )
    logits = tf.concat(logits, axis=2)
    keep = tf.broadcast_to(tf.concat(keep, axis=2), tf.shape(logits))
    logits = tf.where(keep, logits, tf.fill(tf.shape(logits), -1e9))
    loss = -tf.reduce_sum(tf.nn.log_softmax(logits, axis=2)[..., 0])
    return loss / tf.cast(batch, tf.float32) + l2_penalty(
        model, user_vec, tf.gather(tf.reduce_sum(unique_vec**2, 1), where)
    )


def l2_penalty(model, user_vec: tf.Tensor, item_sq_norms: tf.Tensor) -> tf.Tensor:
    # Penalising the batch's outputs (not whole tables) keeps a step's cost independent
    # of the catalogue size; each item counts once per occurrence in the batch.
    if model.l2 == 0.0:
        return tf.constant(0.0)
    return model.l2 * (
        tf.reduce_mean(tf.reduce_sum(user_vec**2, 1)) + tf.reduce_mean(item_sq_norms)
    )
