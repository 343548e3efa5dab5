"""Training under a `tf.distribute` strategy: one machine's devices, or several workers.

There is one training loop, `training.Trainer`, for one device and for many: this module
only makes the strategy (`make_strategy`, from `training.distribution_strategy` or by name),
says which worker writes results (`is_chief`, `worker_directory`) and runs the command line
(`main`), which trains through `TwoTowerRecallSystem.train_model` like every other entry
point, so a distributed run has the same checkpoints, resume, refit and ensembles.

How a strategy trains (`Trainer`): the model is built inside `strategy.scope()` (by
`TwoTowerRecallSystem.build_model`, `fitting.refit` or the tuning trials), and the Trainer
makes the optimizer, its slots and the checkpoint in the same scope, so all are mirrored.
Each step gives every replica an even slice of each member's batch (`training.batch_size` is
global), runs `TwoTowerModel.train_step` on every replica with its loss scaled by 1/replicas
(the optimizer sums the replicas' gradients, so the update is the mean over the global batch)
and averages the replicas' losses. Every worker holds the whole (small) index arrays and
shuffles them with the same (seed, epoch) generators, then feeds its replicas their slices:
no input pipeline to coordinate. Validation and early stopping run on every worker on the
same weights, so their decisions agree; every worker must make the same calls, because
reading BatchNorm's sync-on-read statistics is itself a collective. Only the chief writes the
run's checkpoint directory, TensorBoard logs and run directory; another worker checkpoints to
its own directory beside the chief's (`worker_directory`), since saving is collective too.

Strategies (`training.distribution_strategy` in the config, or `--strategy`):
- `default`: no distribution (one device; exactly the single-process training);
- `mirrored`: `MirroredStrategy` over the local GPUs (or the CPU);
- `multi_worker_mirrored`: `MultiWorkerMirroredStrategy`; every worker runs the same command
  with its own `TF_CONFIG` (see docs/serving.md and
  `python -m twotower_utils.model.distributed -h`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from twotower_utils.config import DISTRIBUTION_STRATEGIES, load_config, parse_overrides
from twotower_utils.logs import configure_logging

__all__ = ["STRATEGIES", "cluster_spec", "is_chief", "is_default", "main", "make_strategy",
           "worker_directory"]

STRATEGIES = DISTRIBUTION_STRATEGIES
# Its class is private to TensorFlow; this module is imported outside every strategy scope,
# where get_strategy() is the default strategy.
_DEFAULT_STRATEGY = type(tf.distribute.get_strategy())


def cluster_spec() -> dict[str, Any]:
    """The parsed `TF_CONFIG` ({} when unset); a ValueError names a malformed one."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return {}
    try:
        spec = json.loads(text)
        workers = spec["cluster"]["worker"]
        task = spec["task"]
        assert isinstance(workers, list) and workers and task["type"] in ("worker", "chief")
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise ValueError(
            f"TF_CONFIG = {text!r}: expected JSON like {{\"cluster\": {{\"worker\": "
            "[\"host0:port\", \"host1:port\"]}, \"task\": {\"type\": \"worker\", \"index\": "
            f"0}}}} ({error})") from None
    return spec


def make_strategy(name: str = "default", devices: list[str] | None = None,
                  timeout_seconds: float | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` called `name` (one of `STRATEGIES`).

    `devices` restricts `mirrored` to those devices (e.g. ["/cpu:0", "/cpu:1"] after
    splitting the CPU into logical devices); `timeout_seconds` bounds each collective of
    `multi_worker_mirrored` (a dead peer then fails the run instead of hanging it). The
    multi-worker strategy needs `TF_CONFIG`; a ValueError says so when it is missing.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        if not cluster_spec():
            raise ValueError("strategy 'multi_worker_mirrored': TF_CONFIG is not set; every "
                             "worker needs it (cluster addresses and its own task index)")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"strategy = {name!r}: expected one of {', '.join(STRATEGIES)}")


def is_chief() -> bool:
    """True on the worker that writes results: task 0 (or the "chief" task), or no cluster."""
    spec = cluster_spec()
    if not spec:
        return True
    task = spec["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and int(task["index"]) == 0
                                       and "chief" not in spec["cluster"])


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """True for the default (no-op) strategy, the one in effect outside every scope."""
    return isinstance(strategy, _DEFAULT_STRATEGY)


def worker_directory(directory: str | Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this worker writes checkpoints meant for `directory`: `directory` itself on
    the chief (and in a single process), else `<directory>.worker-<task index>` beside it.

    Every worker must save (a save reads sync-on-read variables, a collective), but only the
    chief's copy is the run's; the others' would clobber it.
    """
    directory = Path(directory)
    if strategy.extended.should_checkpoint:
        return directory
    return directory.with_name(f"{directory.name}.worker-{strategy.cluster_resolver.task_id}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m twotower_utils.model.distributed",
        description="Two-tower training under a tf.distribute strategy (the same training as "
                    "`make train`: checkpoints, resume, refit). For several workers set "
                    "TF_CONFIG in each and run the same command on every one.")
    parser.add_argument("--config", default="config.json")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="override a config key; VALUE read as JSON, else YAML, else text")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="default: training.distribution_strategy, else 'default'")
    parser.add_argument("--cpu-replicas", type=int, default=0,
                        help="split the CPU into this many logical devices (mirrored on CPU)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a collective with a dead peer fails")
    parser.add_argument("--summary", help="JSON file the chief writes (history, metrics); "
                        "with '{task}' in the name every worker writes its own")
    parser.add_argument("--run-id", default=None,
                        help="names the checkpoints (models/.checkpoints/<run_id>/) and, with "
                        "--save, models/<run_id>/; give every worker the same one")
    parser.add_argument("--resume", action="store_true",
                        help="continue the --run-id's last checkpoint (on every worker)")
    parser.add_argument("--save", action="store_true", help="chief saves the run directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: train on prepared data under a strategy through `TwoTowerRecallSystem.train_model`
    (checkpoints, `--resume`, refit); the chief prints the result and writes the JSON summary
    and, with --save, the run directory. Returns the exit status."""
    args = _parse_args(argv)
    overrides = parse_overrides(args.param)
    if args.strategy:
        # In the configuration too, so the saved config.json says how the run trained.
        overrides["training.distribution_strategy"] = args.strategy
    config = load_config(args.config, overrides)
    if args.resume and not args.run_id:
        raise SystemExit("--resume needs --run-id: the run whose checkpoints to continue")
    devices = None
    if args.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
        devices = [f"/cpu:{i}" for i in range(args.cpu_replicas)]
    name = config.training.distribution_strategy
    strategy = make_strategy(name, devices, args.timeout)
    from twotower_utils.data.fingerprint import data_fingerprint
    from twotower_utils.data.processed import is_processed_for
    from twotower_utils.system import TwoTowerRecallSystem

    digest = data_fingerprint(config).digest
    directory = config.processed_dir(digest)
    if not is_processed_for(directory, digest):
        raise SystemExit(f"{directory}: no processed data; run the data stage first (`make "
                         "data` with the same overrides) so every worker reads the same split")
    chief = is_chief()
    # The chief shows the progress; the other workers' would only repeat it.
    configure_logging("INFO" if chief else "WARNING")
    system = TwoTowerRecallSystem(args.config, overrides, run_id=args.run_id,
                                  strategy=strategy)
    system.prepare_data(reuse=True)
    result = system.train_model(resume=args.resume, save=args.save)
    # After training the system holds an undistributed copy of the weights on every worker.
    weights = system.model.get_weights()
    task = int(cluster_spec().get("task", {}).get("index", 0))
    path = args.summary.format(task=task) if args.summary else None
    if not (chief or (path and "{task}" in args.summary)):
        return 0
    workers = len(cluster_spec().get("cluster", {}).get("worker", [])) or 1
    summary = {"task": task, "strategy": name, "replicas": strategy.num_replicas_in_sync,
               "workers": workers, "best_epoch": result.best_epoch,
               "best_metric": result.best_metric, "metric": result.metric,
               "history": result.history, "seconds": result.seconds,
               "resumed_from": result.resumed_from, "extra": result.extra,
               "weights_checksum": float(sum(np.abs(w).sum() for w in weights))}
    if system.run_dir is not None:
        summary["run_dir"] = str(system.run_dir)
    if path:
        Path(path).write_text(json.dumps(summary, indent=1))
    print(f"best epoch {result.best_epoch}: {result.metric} {result.best_metric:.4f} "
          f"({summary['replicas']} replicas on {workers} worker(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
