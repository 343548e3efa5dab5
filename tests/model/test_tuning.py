"""The tuning step (`training.tune`): trials early-stopped on validation within a budget, the
winner trained on, test never read; bad trials refused at load time."""

import os

import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
pytest.importorskip("tensorflow")

from synthetic_settings import SMALL_SYNTHETIC  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402
from twotower_utils.typed_config import ConfigError  # noqa: E402

TRIALS = [{"model.l2_regularization": 0.5}, {"model": {"embedding_dim": 8}}]


def tuned_system(project_root, tmp_path, **extra):
    from twotower_utils.system import TwoTowerRecallSystem

    paths = {f"paths.{name}": str(tmp_path / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    overrides = {**SMALL_SYNTHETIC, **paths, "training.epochs": 2,
                 "model.ensemble_size": 2, "training.tune.enabled": True,
                 "training.tune.trials": TRIALS, **extra}
    system = TwoTowerRecallSystem(project_root / "config.json", overrides,
                                  run_id="tuned")
    system.prepare_data()
    return system


def test_every_trial_is_judged_on_validation_and_the_winner_is_trained_on(project_root,
                                                                         tmp_path):
    system = tuned_system(project_root, tmp_path)
    read = []
    interactions = system.data.interactions

    def spy(split):
        read.append(split)
        return interactions(split)

    system.data.interactions = spy
    result = system.train_model(save=False)
    trials = system.tuning.trials
    assert list(trials["trial"]) == [0, 1, 2] and system.tuning.skipped == 0
    scores = list(trials["val_ndcg@10"])
    assert system.tuning.winner == scores.index(max(scores))
    base = tuned_system(project_root, tmp_path / "base").config.model
    assert system.config.model.l2_regularization == (
        0.5 if system.tuning.winner == 1 else base.l2_regularization)
    assert system.config.model.embedding_dim == (
        8 if system.tuning.winner == 2 else base.embedding_dim)
    assert system.config.training.tune.trials == TRIALS  # kept as configured
    # The winner's early stopping is the run's: not trained a second time.
    assert result.best_metric == pytest.approx(max(scores))
    assert result.extra["tuning"]["winner"] == system.tuning.winner
    assert "test" not in read


def test_the_budget_stops_starting_trials(project_root, tmp_path):
    system = tuned_system(project_root, tmp_path, **{"training.tune.budget_seconds": 0.001,
                                                      "training.refit_with_validation": False})
    system.train_model(save=False)
    assert list(system.tuning.trials["trial"]) == [0] and system.tuning.skipped == 2
    assert system.tuning.winner == 0


@pytest.mark.parametrize("trial, named", [
    ({"data.split.seed": 1}, "data.split.seed cannot be tuned"),
    ({"training.seed": 1}, "training.seed cannot be tuned"),
    ({"model.embedding_dim": 0}, "model.embedding_dim = 0"),
    ({"model.no_such_key": 1}, "no_such_key"),
])
def test_bad_trials_are_refused_naming_the_trial(project_root, trial, named):
    with pytest.raises(ConfigError) as caught:
        load_config(project_root / "config.json",
                    {"training.tune.trials": [{"model.l2_regularization": 0.1}, trial]})
    message = str(caught.value)
    assert "training.tune.trials[1]" in message and named in message
    assert "training.tune.trials[0]" not in message
