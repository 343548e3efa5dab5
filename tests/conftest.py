"""Shared fixtures. Tests that need MovieLens-100K read it from TWOTOWER_ML100K_DIR and skip
with a clear reason where no local copy is configured; nothing here uses the network."""

import logging
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _package_logging_restored():
    """Undo what a test does to the package logger (`configure_logging` attaches a handler
    to a test's stream, sets a level and stops propagation), so no test sees another's
    logging set-up."""
    logger = logging.getLogger("twotower_utils")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (holds config.json)."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """A local copy of the GroupLens ml-100k files, or skip."""
    value = os.environ.get("TWOTOWER_ML100K_DIR")
    if not value or not (Path(value) / "u.data").is_file():
        pytest.skip("MovieLens-100K not available locally: set TWOTOWER_ML100K_DIR to a "
                    "directory holding the GroupLens ml-100k files (u.data, u.user, u.item)")
    return Path(value)


# --- datasets (twotower_utils.data.datasets) ------------------------------------------------------


@pytest.fixture()
def small_synthetic():
    """A small synthetic `RawDataset` with planted clusters: 300 users, 200 items, 6000 rows."""
    from twotower_utils.data.datasets import generate_synthetic

    return generate_synthetic(300, 200, 6000, num_clusters=8, seed=0)
