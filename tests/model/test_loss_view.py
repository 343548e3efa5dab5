"""The model shown in 03_training: the tower diagram and one BCE batch laid out pair by pair,
whose rebuilt loss must equal the loss the model computes on that batch."""

import matplotlib
import matplotlib.pyplot
import numpy as np
import pytest
from synthetic_settings import SMALL_SYNTHETIC

from twotower_utils.system import TwoTowerRecallSystem

matplotlib.use("Agg")
pytestmark = pytest.mark.tf

MEMBERS = {"model.ensemble_size": 3, "model.ensemble_member_overrides": [
    {"training.loss": "softmax"},
    {"training.logq_correction": True, "data.negative_sampling": "popularity",
     "model.history_leave_one_out": True},
    {}]}


@pytest.fixture(scope="module")
def systems(tmp_path_factory, project_root):
    root = tmp_path_factory.mktemp("loss_view")
    paths = {f"paths.{name}": str(root / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    built = {}
    for name, extra in (("single", {}), ("ensemble", MEMBERS)):
        system = TwoTowerRecallSystem(project_root / "config.json",
                                      {**SMALL_SYNTHETIC, **paths, **extra}, run_id=name)
        system.prepare_data(reuse=True)
        system.build_model()
        built[name] = system
    return built


@pytest.mark.parametrize("name", ["single", "ensemble"])
def test_the_bce_breakdown_equals_the_models_loss_on_that_batch(systems, name):
    from twotower_utils.model.loss_view import bce_batch_breakdown

    system = systems[name]
    sampler_states = [s.generator.state.numpy().copy() for s in system.model.samplers]
    breakdown = bce_batch_breakdown(system.model, system.data, batch_size=96)
    assert breakdown.matches, (breakdown.loss, breakdown.model_loss)
    assert breakdown.model_loss == pytest.approx(breakdown.loss, rel=1e-5)
    assert breakdown.negatives_hit_positives == 0
    pairs = breakdown.pairs
    assert len(pairs) == 96 * (1 + breakdown.num_negatives)
    # Each pair's term is the BCE of its label and logit.
    p = 1.0 / (1.0 + np.exp(-pairs["logit"].to_numpy()))
    expected = -np.where(pairs["label"] == 1, np.log(p), np.log(1.0 - p))
    np.testing.assert_allclose(pairs["bce"], expected, rtol=1e-4, atol=1e-5)
    assert breakdown.bce_mean == pytest.approx(
        (pairs["bce"] * pairs["counted"]).sum() / 96, rel=1e-5)
    # Looking at a batch leaves what training draws unchanged.
    for sampler, state in zip(system.model.samplers, sampler_states):
        np.testing.assert_array_equal(sampler.generator.state.numpy(), state)
    shown = breakdown.users(2)
    assert list(shown["kind"][: 1 + breakdown.num_negatives]) == \
        ["positive"] + ["negative"] * breakdown.num_negatives
    assert breakdown.summary().loc["equal", "value"] == "yes"
    if name == "ensemble":
        assert breakdown.member == 1  # the first member trained with BCE


def test_a_model_without_bce_members_says_so(project_root, tmp_path):
    from twotower_utils.model.loss_view import bce_batch_breakdown

    paths = {f"paths.{name}": str(tmp_path / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    system = TwoTowerRecallSystem(project_root / "config.json",
                                  {**SMALL_SYNTHETIC, **paths, "training.loss": "softmax"})
    system.prepare_data()
    system.build_model()
    with pytest.raises(ValueError, match="lays out that loss only"):
        bce_batch_breakdown(system.model, system.data)


def test_the_tower_diagram_is_drawn_from_the_built_model(systems):
    from twotower_utils.reports.model_view import plot_towers, tower_stages

    for system in systems.values():
        for tower in (system.model.user_tower, system.model.item_tower):
            stages = dict(tower_stages(tower))
            width = int(stages["concatenate"][0].split()[0])
            dense = tower.member_layers[0][0][0][0]
            assert dense.kernel.shape[0] == width  # what the diagram says the layer gets
            assert f"{tower.output_dim // tower.members}-d embedding" in stages["output"][0]
        figure = plot_towers(system.model)
        assert figure.axes[0].get_title() == "The two towers"
        texts = " ".join(t.get_text() for t in figure.axes[0].texts)
        matplotlib.pyplot.close(figure)  # later tests check that nothing is left open
        assert "user tower" in texts and "item tower" in texts and "score(user, item)" in texts
