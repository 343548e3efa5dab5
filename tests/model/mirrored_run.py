"""Run by tests/model/test_distributed.py in a fresh interpreter: the CPU split into two
logical devices (possible only before TensorFlow initialises, hence the subprocess), then one
`TwoTowerRecallSystem` training under `MirroredStrategy` over both, uninterrupted, and the
same training killed after an epoch and resumed.

    python tests/model/mirrored_run.py OUT.json CONFIG.json OVERRIDES_JSON KILL_AFTER

writes `{"replicas", "whole": {...}, "resumed": {...}, "killed_at"}` to OUT.json, each run
with its history, result extras, final weights' checksums and checkpoint directories.
"""

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from twotower_utils.model.distributed import make_strategy  # noqa: E402
from twotower_utils.system import TwoTowerRecallSystem  # noqa: E402


class Killed(Exception):
    """Stands for the process dying after an epoch's checkpoint."""


def _run(config_path, overrides, strategy, run_id, resume=False, kill_after=None) -> dict:
    """Train one run; returns its summary (None when it was killed)."""
    system = TwoTowerRecallSystem(config_path, overrides, run_id=run_id,
                                  strategy=strategy)
    system.prepare_data(reuse=True)

    def kill(epoch, _record):
        if epoch == kill_after:
            raise Killed

    try:
        result = system.train_model(resume=resume, save=False,
                                    callbacks=[kill] if kill_after else ())
    except Killed:
        return None
    checkpoints = system.config.path("models_dir") / ".checkpoints"
    return {"history": [{k: v for k, v in r.items() if "seconds" not in k}
                        for r in result.history],
            "best_epoch": result.best_epoch, "best_metric": result.best_metric,
            "resumed_from": result.resumed_from,
            "extra": {k: v for k, v in result.extra.items() if k != "refit_seconds"},
            "weights": [float(np.abs(w).sum()) for w in system.model.get_weights()],
            "plain": not hasattr(system.model.weights[0], "values"),
            "checkpoints": sorted(p.name for p in checkpoints.iterdir())}


def main(out, config_path, overrides, kill_after) -> None:
    """Write the uninterrupted and the killed-and-resumed runs' summaries to `out`."""
    strategy = make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
    whole = _run(config_path, overrides, strategy, "whole")
    assert _run(config_path, overrides, strategy, "killed", kill_after=kill_after) is None
    resumed = _run(config_path, overrides, strategy, "killed", resume=True)
    with open(out, "w") as handle:
        json.dump({"replicas": strategy.num_replicas_in_sync, "whole": whole,
                   "resumed": resumed, "killed_at": kill_after}, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
