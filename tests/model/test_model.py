"""The towers, training (early stopping, refit, kill-and-resume), and the
`TwoTowerRecallSystem` API, on a small synthetic dataset with planted clusters (fixtures in
conftest.py; the losses in test_losses.py, ensembles in test_ensemble.py)."""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from log_capture import captured_log  # noqa: E402
from small_model import SMALL, small_overrides  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402

# ---------------------------------------------------------------------------- towers


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


# ---------------------------------------------------------------------------- resuming


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


