"""Fixtures of the model tests: a small synthetic dataset with planted clusters, processed
once per test module, and systems trained on it (TensorFlow is imported only by the fixtures
that train, through `twotower_utils.model`, which sets TF_USE_LEGACY_KERAS first)."""

import pytest
from log_capture import captured_log
from small_model import small_overrides

from twotower_utils.config import load_config
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch project root whose paths point into a temporary directory."""
    return tmp_path_factory.mktemp("twotower")


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
