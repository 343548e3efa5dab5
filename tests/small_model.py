"""The small synthetic model setting shared by the tests of `twotower_utils.model`."""

from synthetic_settings import SMALL_SYNTHETIC

SMALL = {
    **SMALL_SYNTHETIC,
    "model.dropout": 0.1,
    "model.l2_regularization": 0.0,  # the hand-computed losses of test_losses.py carry no L2
    "training.epochs": 4,
    "training.early_stopping_patience": 10,
}


def small_overrides(workdir, **extra):
    """SMALL plus paths inside `workdir` and any extra overrides."""
    paths = {f"paths.{name}": str(workdir / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    return {**SMALL, **paths, **extra}
