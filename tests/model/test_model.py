"""The towers, the BCE loss and its negatives, training (early stopping, kill-and-resume), and
the `TwoTowerRecallSystem` API, on a small synthetic dataset with planted clusters."""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from log_capture import captured_log  # noqa: E402
from synthetic_settings import SMALL_SYNTHETIC  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed  # noqa: E402

SMALL = {
    **SMALL_SYNTHETIC,
    "model.dropout": 0.1,
    "model.l2_regularization": 0.0,  # the hand-computed loss below is the BCE alone
    "training.epochs": 4,
    "training.early_stopping_patience": 10,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch project root whose paths point into a temporary directory."""
    return tmp_path_factory.mktemp("twotower")


def small_overrides(workdir, **extra):
    """SMALL plus paths inside `workdir` and any extra overrides."""
    paths = {f"paths.{name}": str(workdir / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    return {**SMALL, **paths, **extra}


@pytest.fixture(scope="module")
def config(project_root, workdir):
    """The small synthetic configuration."""
    return load_config(project_root / "config.json", small_overrides(workdir))


@pytest.fixture(scope="module")
def data(config):
    """Processed synthetic data (preprocessed once for the module)."""
    DataPreprocessor(config).run()
    return load_processed(config.processed_dir())


@pytest.fixture(scope="module")
def system(project_root, workdir, data):
    """A trained and saved `TwoTowerRecallSystem` on the synthetic data."""
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(project_root / "config.json", small_overrides(workdir),
                                  run_id="main")
    with captured_log() as lines:
        system.prepare_data(reuse=True)
        system.train_model()
    system.log_lines = lines
    return system


# ---------------------------------------------------------------------------- towers, loss


def test_every_hidden_dense_is_followed_by_batchnorm_activation_and_dropout(data, workdir,
                                                                           project_root):
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json",
                         small_overrides(workdir, **{"model.hidden_layers": [32, 16]}))
    model = build_model(data, config)
    for tower in (model.user_tower, model.item_tower):
        assert len(tower.hidden) == 2
        for dense, norm, activation, dropout in tower.hidden:
            assert isinstance(dense, tf.keras.layers.Dense)
            assert isinstance(norm, tf.keras.layers.BatchNormalization)
            assert isinstance(activation, tf.keras.layers.Activation)
            assert isinstance(dropout, tf.keras.layers.Dropout) and dropout.rate == 0.1
        assert tower.projection.units == 16
    users = tf.constant([1, 2, 3])
    assert model.embed_users(users).shape == (3, 16)
    assert model.embed_items(users).shape == (3, 16)


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


def test_each_member_gets_its_seed_and_its_own_overrides(project_root, workdir):
    from twotower_utils.model.fitting import member_config

    config = load_config(project_root / "config.json", small_overrides(workdir, **{
        "model.ensemble_size": 3, "training.seed": 7,
        "model.ensemble_member_overrides": [{"training": {"loss": "sampled_softmax"}},
                                            {"model.l2_regularization": 0.2}]}))
    members = [member_config(config, m) for m in range(3)]
    assert [m.training.seed for m in members] == [7, 1007, 2007]
    assert [m.training.loss for m in members] == ["sampled_softmax", "bce", "bce"]
    assert [m.model.l2_regularization for m in members] == [0.0, 0.2, 0.0]
    assert all(m.model.ensemble_size == 1 and not m.model.ensemble_member_overrides
               for m in members)
    # Shrinking the ensemble needs no other change: unused entries are ignored.
    single = config.with_overrides({"model.ensemble_size": 1})
    assert member_config(single, 0).training.loss == "sampled_softmax"


def test_joined_members_embed_as_the_members_side_by_side(data, workdir, project_root):
    from twotower_utils.model.fitting import join_members, member_config
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(
        workdir, **{"model.ensemble_size": 3, "model.hidden_layers": [8]}))
    members = [build_model(data, member_config(config, m)) for m in range(3)]
    assert [m.user_tower.members for m in members] == [1, 1, 1]
    joined = join_members(members, data, config)
    users = np.arange(data.num_users)
    np.testing.assert_allclose(
        joined.user_embeddings(users),
        np.hstack([m.user_embeddings(users) for m in members]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(joined.item_embeddings(),
                               np.hstack([m.item_embeddings() for m in members]),
                               rtol=1e-5, atol=1e-6)
    first, second = members[0].item_embeddings(), members[1].item_embeddings()
    assert not np.allclose(first, second)  # members start apart (own seeds)
    features = {spec["name"]: spec["vocabulary"][0] if spec["type"] == "categorical"
                else spec["mean"] + 0.5 * spec["std"]
                for spec in data.feature_specs["user"] if spec["type"] != "multi_hot"}
    np.testing.assert_allclose(
        joined.embed_new("user", features, history_items=np.array([1, 2])),
        np.hstack([m.embed_new("user", features, history_items=np.array([1, 2]))
                   for m in members]), rtol=1e-5, atol=1e-6)


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


# ---------------------------------------------------------------------------- training


def test_loss_falls_and_validation_recall_rises_on_planted_data(system):
    history = system.training_result.history
    assert len(history) == SMALL["training.epochs"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_recall@10"] > history[0]["val_recall@10"]
    # One progress line per epoch plus the summary, no per-step flood.
    epoch_lines = [line for line in system.log_lines if line.startswith("epoch")]
    assert len(epoch_lines) == SMALL["training.epochs"]


def test_kill_and_resume_ends_with_the_same_weights_and_metrics(system, project_root, workdir):
    from twotower_utils.system import TwoTowerRecallSystem

    class Killed(Exception):
        pass

    def kill_after_two(epoch, _record):
        if epoch == 2:
            raise Killed

    overrides = small_overrides(workdir)
    first = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id="killed")
    first.prepare_data(reuse=True)
    with pytest.raises(Killed):
        first.train_model(callbacks=[kill_after_two])
    second = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id="killed")
    second.prepare_data(reuse=True)
    result = second.train_model(resume=True)
    assert result.resumed_from == 2
    for ours, theirs in zip(second.model.weights, system.model.weights, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5, rtol=1e-5)
    assert [r["val_ndcg@10"] for r in result.history] == pytest.approx(
        [r["val_ndcg@10"] for r in system.training_result.history], abs=1e-6)
    assert second.evaluate_model() == pytest.approx(system.evaluate_model(), abs=1e-6)


def test_refit_trains_afresh_on_train_and_validation_for_the_best_epoch_count(
        system, project_root, workdir):
    from twotower_utils.system import TwoTowerRecallSystem

    refit = TwoTowerRecallSystem(
        project_root / "config.json",
        small_overrides(workdir, **{"training.refit_with_validation": True,
                                    "training.refit_from": "scratch"}),
        run_id="refit")
    data = refit.prepare_data(reuse=True)
    with captured_log() as lines:
        result = refit.train_model(save=False)
    # The validation phase is the same run as the fixture's; the refit adds a second model.
    assert result.best_epoch == system.training_result.best_epoch
    assert result.extra["refit_epochs"] == result.best_epoch
    assert any(line.startswith("refitting on train + validation") for line in lines)
    both = (data.interactions("train") + data.interactions("validation")).tocsr()
    sampler = refit.model.sampler
    users, items = both.nonzero()
    assert sampler.is_positive(tf.constant(users), tf.constant(items)).numpy().all()
    assert refit.refitted
    with pytest.raises(ValueError, match="refitted on train"):
        refit.evaluate_model(split="validation")
    assert refit.evaluate_model(k_values=[10])["ndcg@10"] > 0


def test_refit_continues_the_early_stopped_model_on_train_and_validation(
        system, project_root, workdir):
    from twotower_utils.system import TwoTowerRecallSystem

    def refit_system(run_id, learning_rate):
        refit = TwoTowerRecallSystem(project_root / "config.json", small_overrides(workdir, **{
            "training.refit_with_validation": True, "training.refit_from": "early_stopped",
            "training.refit_epochs": 2,
            "training.refit_learning_rate": learning_rate}), run_id=run_id)
        refit.prepare_data(reuse=True)
        with captured_log() as lines:
            return refit, refit.train_model(save=False), lines

    # A vanishing learning rate leaves the weights where early stopping left them: the
    # refit starts from them, not from a fresh initialisation.
    still, result, lines = refit_system("refit-still", 1e-12)
    assert result.best_epoch == system.training_result.best_epoch
    assert result.extra["refit_epochs"] == 2 and result.extra["refit_from"] == "early_stopped"
    assert any("from the early-stopped weights" in line for line in lines)
    early = [v.numpy() for v in system.model.trainable_variables]
    for refitted, before in zip(still.model.trainable_variables, early):
        np.testing.assert_allclose(refitted.numpy(), before, atol=1e-6)
    moved, _, _ = refit_system("refit-moved", 0.005)
    assert any(not np.allclose(after.numpy(), before)
               for after, before in zip(moved.model.trainable_variables, early))
    # It trained on train + validation: every such pair is a positive of its sampler.
    data = moved.data
    users, items = (data.interactions("train") + data.interactions("validation")).nonzero()
    assert moved.model.sampler.is_positive(tf.constant(users), tf.constant(items)).numpy().all()
    assert moved.refitted


def test_cold_items_split_validates_among_the_cold_validation_items(project_root, tmp_path):
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(
        project_root / "config.json",
        small_overrides(tmp_path, **{"data.split.method": "cold_items", "training.epochs": 2}),
        run_id="cold")
    data = system.prepare_data()
    assert not set(data.validation["item_idx"]) & set(data.train["item_idx"])
    result = system.train_model(save=False)
    # Ranked among the items seen in training, cold validation items could never be hit.
    assert all(record["val_recall@10"] > 0 for record in result.history)


def test_early_stopping_restores_the_best_epochs_weights(data, project_root, workdir):
    from twotower_utils.system import TwoTowerRecallSystem

    overrides = small_overrides(workdir, **{"training.epochs": 6,
                                            "training.early_stopping_patience": 1,
                                            "training.learning_rate": 0.2})
    system = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id="early")
    system.prepare_data(reuse=True)
    result = system.train_model(save=False)
    best = max(r["val_ndcg@10"] for r in result.history)
    assert result.best_metric == pytest.approx(best)
    assert system.evaluate_model("validation", k_values=[10], metrics=["ndcg"])[
        "ndcg@10"] == pytest.approx(best, abs=1e-6)
    # A learning rate this large overshoots, so patience 1 stops the run one epoch after
    # its best.
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 1 < 6


def test_gains_within_min_delta_do_not_count_as_improvements(data, project_root, workdir):
    from twotower_utils.system import TwoTowerRecallSystem

    # No nDCG can beat another by more than 1: only the first epoch improves (on -inf).
    overrides = small_overrides(workdir, **{"training.epochs": 6,
                                            "training.early_stopping_patience": 2,
                                            "training.early_stopping_min_delta": 1.0,
                                            "model.ensemble_size": 1})
    system = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id="min-delta")
    system.prepare_data(reuse=True)
    result = system.train_model(save=False)
    assert result.best_epoch == 1 and result.stopped_early
    assert len(result.history) == 3
    assert result.best_metric == pytest.approx(result.history[0]["val_ndcg@10"])


# ---------------------------------------------------------------------------- system API


def test_recommendations_are_ranked_and_exclude_the_users_training_items(system):
    data = system.data
    for user_index in (1, 2, 3):
        user_id = data.user_vocab[user_index - 1]
        recs = system.recommend_items(user_id, top_k=10)
        assert list(recs["rank"]) == list(range(1, 11))
        assert recs["score"].is_monotonic_decreasing
        seen = {data.item_vocab[i - 1] for i in data.history[user_index].indices}
        assert seen and not seen & set(recs["item_id"])
        with_seen = system.recommend_items(user_id, top_k=50, exclude_seen=False)
        assert seen & set(with_seen["item_id"])
    batch = system.recommend_batch([data.user_vocab[0]], top_k=10)
    assert list(batch["item_id"]) == list(system.recommend_items(data.user_vocab[0])["item_id"])


def test_embeddings_have_the_model_size_and_unknown_ids_raise(system):
    data = system.data
    assert system.get_user_embedding(data.user_vocab[0]).shape == (16,)
    assert system.get_item_embedding(data.item_vocab[0]).shape == (16,)
    with pytest.raises(KeyError, match="unknown item_id 'no-such-item'.*item_features"):
        system.get_item_embedding("no-such-item")
    spec = system.data.feature_specs["item"]
    features = {s["name"]: s["vocabulary"][0] if "vocabulary" in s else s["mean"] for s in spec}
    assert system.get_item_embedding("no-such-item", item_features=features).shape == (16,)


def test_top_k_must_be_positive(system):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="top_k"):
            system.recommend_items(system.data.user_vocab[0], top_k=bad)


def test_unknown_user_gets_cold_start_with_features_or_a_named_error(system):
    with pytest.raises(KeyError, match="unknown user_id 'stranger'.*user_features"):
        system.recommend_items("stranger")
    spec = system.data.feature_specs["user"]
    features = {s["name"]: s["vocabulary"][0] if "vocabulary" in s else s["mean"] for s in spec}
    recs = system.recommend_items("stranger", top_k=5, user_features=features)
    assert len(recs) == 5
    item = system.data.item_vocab[0]
    recs = system.recommend_items("stranger", top_k=5, user_features=features,
                                  history_items=[item])
    assert item not in set(recs["item_id"])


@pytest.fixture(scope="module")
def ensemble_system(project_root, workdir, data):
    """A trained and saved system whose towers are ensembles of two members."""
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(
        project_root / "config.json",
        small_overrides(workdir, **{"model.ensemble_size": 2, "training.epochs": 2}),
        run_id="ensemble")
    system.prepare_data(reuse=True)
    system.train_model()
    return system


@pytest.mark.parametrize("which", ["system", "ensemble_system"])
def test_a_saved_run_reloads_and_recommends_identically(which, request):
    from twotower_utils.serving.artifacts import RunArtifacts
    from twotower_utils.system import TwoTowerRecallSystem

    system = request.getfixturevalue(which)
    run_dir = system.run_dir
    assert (run_dir / "item_embeddings.npy").is_file()
    assert (run_dir / "user_tower" / "saved_model.pb").is_file()
    assert not list(run_dir.parent.glob(f".{run_dir.name}.tmp-*"))
    loaded = TwoTowerRecallSystem.load(run_dir)
    # Built through __init__ (no __new__), holding the run's RunArtifacts as its data.
    assert isinstance(loaded.artifacts, RunArtifacts) and loaded.data is loaded.artifacts
    assert system.has_training_data and not loaded.has_training_data
    assert loaded.run_id == run_dir.name and loaded.metrics == system.metrics
    with pytest.raises(RuntimeError, match="no evaluation data: a loaded run"):
        loaded.evaluate_model()
    for user_id in system.data.user_vocab[:5]:
        ours, theirs = system.recommend_items(user_id), loaded.recommend_items(user_id)
        assert list(ours["item_id"]) == list(theirs["item_id"])
        np.testing.assert_allclose(ours["score"], theirs["score"], rtol=1e-6)
    spec = system.data.feature_specs["user"]
    features = {s["name"]: s["vocabulary"][0] if "vocabulary" in s else s["mean"] for s in spec}
    np.testing.assert_allclose(loaded.get_user_embedding("new", user_features=features),
                               system.get_user_embedding("new", user_features=features),
                               rtol=1e-5, atol=1e-6)
    exported = tf.saved_model.load(str(run_dir / "item_tower"))
    inputs = {"id": tf.constant([1, 2], tf.int32)}
    for name, table in system.data.side_features("item").items():
        if name != "__id__":
            inputs[name] = tf.constant(table[[1, 2]])
    out = exported.signatures["serving_default"](**inputs)["embedding"].numpy()
    np.testing.assert_allclose(out, loaded._items()[[1, 2]], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- one-step ensembles


def test_ensemble_members_train_in_one_step_each_on_its_own_batch(data, workdir, project_root):
    from twotower_utils.model import losses
    from twotower_utils.model.training import Trainer
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(workdir, **{
        "model.ensemble_size": 3, "model.ensemble_member_overrides": [
            {}, {"training.loss": "softmax"}, {"model.l2_regularization": 0.1}]}))
    model = build_model(data, config)
    assert [s.loss for s in model.settings] == ["bce", "softmax", "bce"]
    assert [s.l2 for s in model.settings] == [0.0, 0.0, 0.1]
    trainer = Trainer(model, config, data.train["user_idx"].to_numpy(),
                      data.train["item_idx"].to_numpy(), None, data.history,
                      checkpoint_dir=workdir / "one-step")
    orders = trainer.epoch_orders(1)
    assert len(orders) == 3 and all(sorted(o) == list(range(len(data.train))) for o in orders)
    assert not np.array_equal(orders[0], orders[1])  # own batch order per member
    users = data.train["user_idx"].to_numpy()[np.stack(orders)[:, :64]].astype(np.int32)
    items = data.train["item_idx"].to_numpy()[np.stack(orders)[:, :64]].astype(np.int32)
    # Evaluation mode: no random dropout, and each member's negatives are fixed below.
    negatives = tf.constant(np.tile(np.arange(5, 9, dtype=np.int32), (64, 1)))
    for sampler in model.samplers:
        sampler.sample = lambda users, k: (negatives[:tf.size(users), :k],
                                           tf.ones([tf.size(users), k], tf.bool))
    total = float(model.compute_loss({"user_idx": tf.constant(users),
                                      "item_idx": tf.constant(items)}))
    parts = [float(losses.member_loss(model, m, tf.constant(users[m]), tf.constant(items[m])))
             for m in range(3)]
    assert total == pytest.approx(sum(parts), rel=1e-5)
    # Member m's loss depends only on member m's slice: another member's batch changes
    # nothing in it.
    swapped = float(losses.member_loss(model, 1, tf.constant(users[1]), tf.constant(items[1])))
    assert swapped == pytest.approx(parts[1], rel=1e-6)
    assert len({round(p, 6) for p in parts}) == 3


def test_an_ensemble_is_early_stopped_as_one_model_and_refitted_once(project_root, workdir,
                                                                     data):
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(project_root / "config.json", small_overrides(workdir, **{
        "model.ensemble_size": 2, "training.epochs": 3, "training.refit_with_validation": True,
        "model.ensemble_member_overrides": [{}, {"training.loss": "softmax"}]}),
        run_id="one-step")
    system.prepare_data(reuse=True)
    with captured_log() as lines:
        result = system.train_model(save=False)
    assert len(result.history) == 3  # one early-stopping run, not one per member
    assert sum(line.startswith("refitting on train + validation") for line in lines) == 1
    assert result.extra["ensemble_val_ndcg@10"] == result.best_metric
    members = result.extra["member_val_ndcg@10"]
    assert len(members) == 2 and all(0 < value < 1 for value in members)
    assert system.model.user_tower.members == 2


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


@pytest.mark.parametrize("change", [{"model.embedding_dim": 8},
                                    {"training.learning_rate": 0.02}])
def test_resuming_with_other_settings_is_refused_naming_the_keys(project_root, workdir, change):
    from twotower_utils.model.training import ResumeError
    from twotower_utils.system import TwoTowerRecallSystem

    class Killed(Exception):
        pass

    def kill(_epoch, _record):
        raise Killed

    run_id = f"changed-{next(iter(change)).replace('.', '-')}"
    first = TwoTowerRecallSystem(project_root / "config.json",
                                 small_overrides(workdir, **{"training.epochs": 2}),
                                 run_id=run_id)
    first.prepare_data(reuse=True)
    with pytest.raises(Killed):
        first.train_model(callbacks=[kill])
    second = TwoTowerRecallSystem(project_root / "config.json",
                                  small_overrides(workdir, **{"training.epochs": 2, **change}),
                                  run_id=run_id)
    second.prepare_data(reuse=True)
    key = next(iter(change))
    with pytest.raises(ResumeError, match=rf"{key}: .* in the checkpoint, .* now"):
        second.train_model(resume=True)
    # Training longer is a resumable change.
    third = TwoTowerRecallSystem(project_root / "config.json",
                                 small_overrides(workdir, **{"training.epochs": 3}),
                                 run_id=run_id)
    third.prepare_data(reuse=True)
    assert third.train_model(resume=True, save=False).resumed_from == 1


def test_each_member_keeps_its_own_best_epoch_and_the_refit_takes_it(data, workdir,
                                                                    project_root):
    from twotower_utils.model.ensemble import member_metrics, read_member
    from twotower_utils.model.training import Trainer
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(workdir, **{
        "model.ensemble_size": 2, "training.epochs": 4, "training.learning_rate": 0.05,
        "model.ensemble_member_overrides": [{}, {"training.loss": "softmax"}]}))
    model = build_model(data, config)
    validation = data.interactions("validation")
    trainer = Trainer(model, config, data.train["user_idx"].to_numpy(),
                      data.train["item_idx"].to_numpy(), validation, data.history,
                      checkpoint_dir=workdir / "member-stopping")
    result = trainer.fit()
    epochs = result.extra["member_best_epochs"]
    curves = [[r[f"member{m}_ndcg@10"] for r in result.history] for m in range(2)]
    assert epochs == [int(np.argmax(c)) + 1 for c in curves]
    assert result.best_epoch == max(epochs)
    # Each member's slice is back at its own best epoch.
    values = member_metrics(model, data.history, validation, trainer.candidates, "ndcg@10")
    assert list(values.values()) == pytest.approx([max(c) for c in curves], abs=1e-6)
    refit = build_model(data, config)
    snapshots = {}
    refitter = Trainer(refit, config, data.train["user_idx"].to_numpy(),
                       data.train["item_idx"].to_numpy(), None, data.history,
                       checkpoint_dir=workdir / "member-refit", member_epochs=[1, 2])
    refitter.fit(callbacks=[lambda epoch, _r: snapshots.setdefault(epoch, [
        read_member(refit, m) for m in range(2)])])
    for member, epoch in enumerate([1, 2]):
        for ours, theirs in zip(read_member(refit, member), snapshots[epoch][member],
                                strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_a_stopped_member_leaves_the_step_and_the_others_train_as_before(data, workdir,
                                                                         project_root):
    from twotower_utils.model.ensemble import read_member
    from twotower_utils.model.training import Trainer
    from twotower_utils.model.two_tower import build_model

    config = load_config(project_root / "config.json", small_overrides(workdir, **{
        "model.ensemble_size": 2, "training.epochs": 3,
        "model.ensemble_member_overrides": [{}, {"training.loss": "softmax"}]}))

    def refit(member_epochs):
        model = build_model(data, config)
        trainer = Trainer(model, config, data.train["user_idx"].to_numpy(),
                          data.train["item_idx"].to_numpy(), None, data.history,
                          checkpoint_dir=workdir / f"frozen-{member_epochs}",
                          member_epochs=member_epochs)
        snapshots = {}
        result = trainer.fit(callbacks=[lambda epoch, _r: snapshots.setdefault(
            epoch, read_member(model, 1))])
        return model, result, snapshots

    both, both_result, _ = refit([3, 3])
    alone, alone_result, snapshots = refit([3, 1])
    assert [r["members_trained"] for r in alone_result.history] == [2, 1, 1]
    assert [r["members_trained"] for r in both_result.history] == [2, 2, 2]
    # Member 0 trains exactly as with member 1 beside it ...
    for ours, theirs in zip(read_member(alone, 0), read_member(both, 0), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    # ... and member 1 is its epoch-1 weights, not what it drifted to afterwards.
    for ours, theirs in zip(read_member(alone, 1), snapshots[1], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert any(not np.array_equal(a, b) for a, b in zip(read_member(alone, 1),
                                                         read_member(both, 1), strict=True))
