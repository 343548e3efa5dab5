"""twotower_utils: two-tower retrieval for recommenders.

The subpackages follow the flow of a run (docs/architecture.md draws it): `data` (raw
sources to processed data), `model` (the towers and their training; the only package that
imports TensorFlow, besides serving's SavedModel export), `evaluation` (metrics, top-k,
baselines), `serving` (saved runs, indexes, batch top-k, export), `reports` (the notebooks'
analyses and figures, the runs index) and `pipeline` (the notebooks run by papermill,
sweeps). The top-level modules are shared by all of them: `config` (with `typed_config` and
`config_checks`), `io`, `logs`, `display`, and `system` (`TwoTowerRecallSystem`, the
one-object API over data, model, evaluation and serving).

Importing the package is cheap: TensorFlow is loaded only by the modules that need it, and
only when they are first used.
"""

from twotower_utils.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "DataPreprocessor", "TwoTowerRecallSystem"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy exports keep `import twotower_utils` free of pandas/TensorFlow start-up costs.
    if name == "DataPreprocessor":
        from twotower_utils.data.preprocessing import DataPreprocessor

        return DataPreprocessor
    if name == "TwoTowerRecallSystem":
        from twotower_utils.system import TwoTowerRecallSystem

        return TwoTowerRecallSystem
    raise AttributeError(f"module 'twotower_utils' has no attribute {name!r}")
