"""Ensembles: members with their own seeds and overrides, trained side by side in one step,
each early-stopped on its own and refitted once; members joined into one model."""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from log_capture import captured_log  # noqa: E402
from small_model import small_overrides  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402


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


def test_each_member_keeps_its_own_best_epoch_and_the_refit_takes_it(data, workdir,
                                                                    project_root):
    from twotower_utils.model.ensemble import read_member
    from twotower_utils.model.training import Trainer
    from twotower_utils.model.two_tower import build_model
    from twotower_utils.model.validation import evaluate_ranking, member_metrics, validation_vectors

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
    # The epoch's one embedding pass, shared by both metrics, changes neither.
    vectors = validation_vectors(model, validation)
    assert member_metrics(model, data.history, validation, trainer.candidates, "ndcg@10",
                          vectors=vectors) == values
    assert evaluate_ranking(model, data.history, validation, trainer.candidates,
                            vectors=vectors) == evaluate_ranking(model, data.history,
                                                                 validation, trainer.candidates)
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
