"""The BCE and softmax losses and their negatives, against hand-computed values and TFRS, on
the small synthetic dataset."""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from small_model import small_overrides  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402


@pytest.mark.parametrize("members", [1, 2])
def test_bce_loss_equals_a_hand_computed_value_on_a_fixed_batch(data, workdir, project_root,
                                                                members):
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json",
                         small_overrides(workdir, **{"model.ensemble_size": members}))
    model = build_model(data, config)
    users = tf.constant([1, 2, 3], tf.int32)
    items = tf.constant([data.history[u].indices[0] for u in (1, 2, 3)], tf.int32)
    negatives = tf.constant([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]], tf.int32)
    valid = tf.constant([[True, True, True, False]] * 3)
    for sampler in model.samplers:  # each member draws its own negatives: fix them all
        sampler.sample = lambda _users, _k: (negatives, valid)
    loss = float(model.compute_loss({"user_idx": users, "item_idx": items}))

    loo = model.options["history_leave_one_out"]
    user_vec = model.embed_users(users, exclude_items=items if loo else None).numpy()
    item_vec = model.embed_items(items).numpy()
    neg_vec = model.embed_items(tf.reshape(negatives, [-1])).numpy().reshape(3, 4, -1)
    dim = config.model.embedding_dim
    assert user_vec.shape == (3, members * dim) == item_vec.shape[:1] + (members * dim,)

    def log_sigmoid(x):
        return -np.log1p(np.exp(-x))

    # Per member and positive: its own term plus its valid negatives' (the 4th is invalid);
    # summed over members, averaged over positives.
    expected = 0.0
    for member in range(members):
        part = slice(member * dim, (member + 1) * dim)
        pos = (user_vec[:, part] * item_vec[:, part]).sum(1)
        neg = np.einsum("bd,bkd->bk", user_vec[:, part], neg_vec[:, :, part])
        per_positive = -log_sigmoid(pos) - sum(log_sigmoid(-neg[:, j]) for j in range(3))
        expected += per_positive.mean()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_sampled_softmax_loss_equals_a_hand_computed_value_on_a_fixed_batch(data, workdir,
                                                                           project_root):
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(
        workdir, **{"training.loss": "sampled_softmax", "training.softmax_negatives": 4}))
    model = build_model(data, config)
    users = tf.constant([1, 2, 3], tf.int32)
    items = tf.constant([data.history[u].indices[0] for u in (1, 2, 3)], tf.int32)
    # Shared negatives: each user's second training item is among them, so must drop out.
    shared = np.array([data.history[u].indices[1] for u in (1, 2, 3)] + [7], np.int32)
    model.sampler.draw = lambda _shape: tf.constant(shared)
    loss = float(model.compute_loss({"user_idx": users, "item_idx": items}))

    user_vec = model.embed_users(users).numpy()
    pos = (user_vec * model.embed_items(items).numpy()).sum(1)
    neg = user_vec @ model.embed_items(tf.constant(shared)).numpy().T
    history = data.history.toarray() > 0
    expected = []
    for row, user in enumerate((1, 2, 3)):
        logits = np.concatenate([[pos[row]], neg[row][~history[user, shared]]])
        assert len(logits) <= 4  # at least that user's own second item left out
        expected.append(np.log(np.exp(logits).sum()) - pos[row])
    assert loss == pytest.approx(np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("shared", [0, 100_000])  # 0, or more than the catalogue: all items
def test_sampled_softmax_with_negatives_covering_the_catalogue_is_the_exact_softmax(
        data, workdir, project_root, shared):
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(
        workdir, **{"training.loss": "sampled_softmax", "training.softmax_negatives": shared}))
    model = build_model(data, config)
    model.sampler.draw = None  # the whole catalogue is used: nothing may be drawn
    users = np.array([1, 2], np.int32)
    items = np.array([data.history[u].indices[0] for u in users], np.int32)
    loss = float(model.compute_loss({"user_idx": tf.constant(users),
                                     "item_idx": tf.constant(items)}))
    scores = model.embed_users(tf.constant(users)).numpy() @ model.item_embeddings().T
    train_items = np.asarray(data.history.sum(axis=0)).ravel() > 0
    history = data.history.toarray() > 0
    expected = [np.log(np.exp(np.append(s[i], s[train_items & ~history[u]])).sum()) - s[i]
                for u, i, s in zip(users, items, scores)]
    assert loss == pytest.approx(np.mean(expected), rel=1e-4)


@pytest.mark.parametrize("lookup", ["dense", "hash"])
@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_negatives_never_include_the_users_training_positives(
        data, workdir, project_root, sampling, lookup, monkeypatch):
    from twotower_utils.model import sampler
    from twotower_utils.model.two_tower import build_model

    if lookup == "hash":  # the lookup large data gets: users x items over the dense limit
        monkeypatch.setattr(sampler, "DENSE_MASK_MAX_CELLS", 0)
    config = load_config(project_root / "config.json",
                         small_overrides(workdir, **{"data.negative_sampling": sampling}))
    model = build_model(data, config)
    assert (model.sampler.positive_table is not None) == (lookup == "hash")
    grid_users, grid_items = np.meshgrid(np.arange(data.num_users), np.arange(data.num_items),
                                         indexing="ij")
    is_positive = model.sampler.is_positive(tf.constant(grid_users), tf.constant(grid_items))
    np.testing.assert_array_equal(is_positive.numpy(), data.history.toarray() > 0)
    rows, columns = np.array([3, 1, 3, 7], np.int32), np.arange(data.num_items, dtype=np.int32)
    np.testing.assert_array_equal(  # the [B, C] form the in-batch losses use
        model.sampler.positive_matrix(tf.constant(rows), tf.constant(columns)).numpy(),
        data.history.toarray()[rows] > 0)
    users = np.repeat(np.arange(1, data.num_users), 20).astype(np.int32)
    negatives, valid = model.sampler.sample(tf.constant(users), 8)
    negatives, valid = negatives.numpy(), valid.numpy()
    assert valid.all()
    positives = data.history[users].toarray()
    assert not positives[np.arange(len(users))[:, None], negatives].any()
    assert negatives.min() >= 1  # never the out-of-vocabulary slot
    train_items = np.asarray(data.history.sum(axis=0)).ravel() > 0
    assert train_items[negatives].all()  # only items seen in training


@pytest.mark.parametrize("overrides", [
    {"training.loss": "softmax"},
    {"training.loss": "sampled_softmax", "training.softmax_negatives": 8,
     "training.in_batch_negatives": True, "training.logq_correction": True},
    {"training.in_batch_negatives": True, "data.negative_sampling": "popularity",
     "training.logq_correction": True},
    {"model.similarity": "cosine", "model.temperature": 0.1, "model.hidden_layers": []},
    {"model.ensemble_size": 3, "model.hidden_layers": [16], "training.loss": "softmax"},
    {"model.ensemble_size": 2, "training.loss": "sampled_softmax",
     "training.softmax_negatives": 8, "training.in_batch_negatives": True,
     "data.negative_sampling": "popularity", "training.logq_correction": True},
    {"model.ensemble_size": 2, "training.in_batch_negatives": True},
])
def test_loss_variants_give_finite_losses_and_gradients(data, workdir, project_root, overrides):
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(workdir, **overrides))
    model = build_model(data, config)
    batch = {"user_idx": tf.constant(data.train["user_idx"].to_numpy()[:64]),
             "item_idx": tf.constant(data.train["item_idx"].to_numpy()[:64])}
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(g is not None for g in grads)


def test_in_batch_softmax_equals_the_tfrs_retrieval_task(data, workdir, project_root):
    import tensorflow_recommenders as tfrs

    from twotower_utils.model.losses import in_batch_softmax

    rng = np.random.default_rng(0)
    users, items = (tf.constant(rng.normal(size=(6, 4)), tf.float32) for _ in range(2))
    mask = tf.constant(rng.random((6, 6)) > 0.3) | tf.eye(6, dtype=tf.bool)
    log_q = tf.constant(np.log(rng.uniform(0.01, 0.5, 6)), tf.float32)
    task = tfrs.tasks.Retrieval(loss=tf.keras.losses.CategoricalCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.SUM), temperature=0.5)
    expected = task(users, items, compute_metrics=False, score_mask=mask,
                    candidate_sampling_probability=tf.exp(log_q))
    assert float(in_batch_softmax(users, items, 0.5, mask, log_q)) == pytest.approx(
        float(expected), rel=1e-5)
