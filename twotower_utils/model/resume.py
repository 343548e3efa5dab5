"""Resume safety: a checkpoint records the settings it was trained with, and resuming it
with other settings is refused with the keys that differ.

`Trainer` writes `training_settings(config)` (the model, training and data keys, flat) beside
its checkpoints; `check_resumable` compares them with the current configuration before a
restore, so a changed `model.embedding_dim` does not fail deep inside TensorFlow and a
changed `training.learning_rate` does not silently continue one run with two configurations.
Only how long a run trains (`RESUMABLE_CHANGES`) may change on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from twotower_utils.config import Config

__all__ = ["RESUMABLE_CHANGES", "ResumeError", "check_resumable", "training_settings"]

# Keys a resumed run may change: how long it trains, not what it trains.
RESUMABLE_CHANGES = ("training.epochs", "training.early_stopping_patience",
                     "training.early_stopping_min_delta",
                     "training.distribution_strategy", "data.ml100k_dir",
                     "data.negatives_sample_size")


class ResumeError(ValueError):
    """A checkpoint cannot be resumed with this configuration (names the differing keys)."""


def training_settings(config: Config) -> dict:
    """The configuration keys a checkpoint depends on, flat (`{"model.embedding_dim": 64,
    ...}`): the model, training and data sections, less `RESUMABLE_CHANGES`."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) \
                and not prefix.endswith(("_features", "member_overrides")):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = value

    everything = config.to_dict()
    for section in ("model", "training", "data"):
        walk(section, everything[section])
    # Through JSON, so a stored copy compares equal (tuples become lists, and so on).
    return json.loads(json.dumps({k: v for k, v in flat.items()
                                  if k not in RESUMABLE_CHANGES}))


def check_resumable(stored_path: Path, config: Config) -> None:
    """Refuse (`ResumeError`) to resume a checkpoint made with other settings.

    `stored_path` holds the checkpoint's `training_settings`; a missing file (a checkpoint
    from an older version) is refused too, since its settings cannot be checked.
    """
    where = stored_path.parent
    if not stored_path.is_file():
        raise ResumeError(f"cannot resume from {where}: it holds no record of the settings "
                          "it was trained with; train afresh (resume=False)")
    stored, current = json.loads(stored_path.read_text()), training_settings(config)
    keys = sorted(set(stored) | set(current))
    differ = [k for k in keys if stored.get(k, "<unset>") != current.get(k, "<unset>")]
    if differ:
        changes = "; ".join(f"{k}: {stored.get(k, '<unset>')!r} in the checkpoint, "
                            f"{current.get(k, '<unset>')!r} now" for k in differ)
        raise ResumeError(
            f"cannot resume from {where}: the checkpoint was trained with other settings "
            f"({changes}). Resume with the checkpoint's settings, or train afresh "
            "(resume=False, or a new run id); only "
            + ", ".join(RESUMABLE_CHANGES) + " may change on resume")
