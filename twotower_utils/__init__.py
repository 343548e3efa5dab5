"""twotower_utils: two-tower retrieval for recommenders.

Importing the package is cheap: TensorFlow is loaded only by the modules that need it
(model, training, serving, system), and only when they are first used.
"""

from twotower_utils.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "DataPreprocessor", "TwoTowerRecallSystem"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy exports keep `import twotower_utils` free of pandas/TensorFlow start-up costs.
    if name == "DataPreprocessor":
        from twotower_utils.preprocessing import DataPreprocessor

        return DataPreprocessor
    if name == "TwoTowerRecallSystem":
        from twotower_utils.system import TwoTowerRecallSystem

        return TwoTowerRecallSystem
    raise AttributeError(f"module 'twotower_utils' has no attribute {name!r}")
