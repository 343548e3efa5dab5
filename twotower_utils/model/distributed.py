"""Training under a `tf.distribute` strategy: one machine's devices, or several workers.

The model is `model.build_model` built inside `strategy.scope()`, so its variables (and the
optimizer's slots) are mirrored; each step splits the global batch (`training.batch_size`)
evenly over the replicas, every replica computes the same BCE loss as single-process
training on its share, and the gradients are summed across replicas (the loss is divided by
the replica count, so the update is the mean over the global batch, as with one process).
Every worker holds the whole (small) index arrays and shuffles them with the same
(seed, epoch) generator, then takes its replicas' slices of each global batch: no input
pipeline to coordinate. Validation and early stopping run on every worker on the same
weights, so their decisions agree; every worker must make the same calls, because reading
BatchNorm's sync-on-read statistics is itself a collective. An ensemble
(`model.ensemble_size` > 1) trains here with every member on the same global batch and one
early stopping for all; the single-process `Trainer` gives each member its own batch order and
its own early stopping.

Strategies (`training.distribution_strategy` in the config, or `strategy=`):
- `default`: no distribution (one device);
- `mirrored`: `MirroredStrategy` over the local GPUs (or the CPU);
- `multi_worker_mirrored`: `MultiWorkerMirroredStrategy`; every worker runs the same command
  with its own `TF_CONFIG` (see docs/serving.md and
  `python -m twotower_utils.model.distributed -h`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from twotower_utils.config import DISTRIBUTION_STRATEGIES, Config, load_config, parse_overrides
from twotower_utils.evaluation.protocol import evaluation_protocol
from twotower_utils.model.training import evaluate_ranking, make_optimizer
from twotower_utils.model.two_tower import build_model

__all__ = ["STRATEGIES", "DistributedResult", "cluster_spec", "make_strategy", "main",
           "train_distributed"]

STRATEGIES = DISTRIBUTION_STRATEGIES


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


@dataclass
class DistributedResult:
    """What `train_distributed` did: the trained `model` (best epoch's weights), one
    history record per epoch, the best epoch and metric, the replica count and timings."""

    model: Any
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    metric: str
    replicas: int
    workers: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _replica_slices(users: np.ndarray, items: np.ndarray, replicas: int):
    """Even per-replica slices of one global batch (None when a replica would get none)."""
    if len(users) < replicas:
        return None
    return np.array_split(users, replicas), np.array_split(items, replicas)


def train_distributed(data, config: Config, strategy: tf.distribute.Strategy | str | None = None,
                      epochs: int | None = None, log=print) -> DistributedResult:
    """Train a `TwoTowerModel` on `data` under `strategy` with early stopping.

    Args:
        data: `ProcessedData` (the same on every worker).
        config: the full `Config`; batch size, epochs, schedule, patience, metric and seed
            come from `training` (the batch size is global: split over all replicas).
        strategy: a strategy, a name from `STRATEGIES`, or None for the config's
            `training.distribution_strategy` (else "default").
        epochs: overrides `training.epochs`.
        log: where the one-line-per-epoch progress goes (None: silent).

    Returns:
        A `DistributedResult`; its model holds the best epoch's weights.
    """
    log = log or (lambda _line: None)
    if strategy is None:
        strategy = config.training.distribution_strategy
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    train = config.training
    epochs = train.epochs if epochs is None else int(epochs)
    with strategy.scope():
        model = build_model(data, config)
        optimizer = make_optimizer(config, len(data.train))
        # Slots must exist, mirrored, before the first step traces.
        optimizer._create_all_weights(model.trainable_variables)
    replicas = strategy.num_replicas_in_sync

    def replica_step(users, items):
        with tf.GradientTape() as tape:
            loss = model.compute_loss({"user_idx": users, "item_idx": items}, training=True)
            scaled = loss / replicas
        variables = model.trainable_variables
        # Dense embedding gradients, as in TwoTowerModel.train_step (fused dense Adam).
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(scaled, variables)]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(reduce_retracing=True)
    def step(users, items):
        losses = strategy.run(replica_step, args=(users, items))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    train_users = data.train["user_idx"].to_numpy().astype(np.int32)
    train_items = data.train["item_idx"].to_numpy().astype(np.int32)
    protocol = evaluation_protocol(data, "validation")
    validation, exclude, candidates = protocol.relevant, protocol.exclude, protocol.candidates
    metric = train.early_stopping_metric
    k_values = sorted({10, int(metric.split("@")[1])})
    history, best, best_epoch, best_weights, wait = [], -np.inf, 0, None, 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        order = np.random.default_rng([train.seed, epoch]).permutation(len(train_users))
        users, items = train_users[order], train_items[order]
        losses = []
        for start in range(0, len(order), train.batch_size):
            parts = _replica_slices(users[start:start + train.batch_size],
                                    items[start:start + train.batch_size], replicas)
            if parts is None:
                continue  # a last batch smaller than the replica count is dropped
            per_user, per_item = (strategy.experimental_distribute_values_from_function(
                lambda ctx, chunks=chunks: tf.constant(chunks[ctx.replica_id_in_sync_group]))
                for chunks in parts)
            losses.append(float(step(per_user, per_item)))
        train_seconds = time.perf_counter() - epoch_start
        metrics = evaluate_ranking(model, exclude, validation, candidates, k_values)
        record = {"epoch": epoch, "loss": float(np.mean(losses)),
                  **{f"val_{key}": value for key, value in metrics.items()},
                  "train_seconds": train_seconds,
                  "seconds": time.perf_counter() - epoch_start}
        history.append(record)
        improved = record[f"val_{metric}"] > best
        if improved:
            best, best_epoch, wait = record[f"val_{metric}"], epoch, 0
            best_weights = model.get_weights()
        else:
            wait += 1
        log(f"epoch {epoch:3d}/{epochs}  loss {record['loss']:.4f}  {metric} "
            f"{record[f'val_{metric}']:.4f}  {record['seconds']:.1f} s  ({replicas} replicas)"
            + ("  *" if improved else ""))
        if wait >= max(train.early_stopping_patience, 1) and epoch < epochs:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    workers = len(cluster_spec().get("cluster", {}).get("worker", [])) or 1
    return DistributedResult(model=model, history=history, best_epoch=best_epoch,
                             best_metric=float(best), metric=metric, replicas=replicas,
                             workers=workers, seconds=time.perf_counter() - started)


def is_chief() -> bool:
    """True on the worker that writes results: task 0 (or the "chief" task), or no cluster."""
    spec = cluster_spec()
    if not spec:
        return True
    task = spec["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and int(task["index"]) == 0
                                       and "chief" not in spec["cluster"])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m twotower_utils.model.distributed",
        description="Two-tower training under a tf.distribute strategy. For several workers "
                    "set TF_CONFIG in each and run the same command on every one.")
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
    parser.add_argument("--run-id", default=None, help="with --save: models/<run_id>/")
    parser.add_argument("--save", action="store_true", help="chief saves the run directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: train on prepared data under a strategy; the chief prints the result and writes
    the JSON summary and, with --save, the run directory (as `TwoTowerRecallSystem.save`).
    Returns the exit status."""
    args = _parse_args(argv)
    overrides = parse_overrides(args.param)
    config = load_config(args.config, overrides)
    devices = None
    if args.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
        devices = [f"/cpu:{i}" for i in range(args.cpu_replicas)]
    name = args.strategy or config.training.distribution_strategy
    strategy = make_strategy(name, devices, args.timeout)
    from twotower_utils.data.processed import load_processed

    directory = config.processed_dir()
    if not (directory / "stats.json").is_file():
        raise SystemExit(f"{directory}: no processed data; run the data stage first (`make "
                         "data` with the same overrides) so every worker reads the same split")
    data = load_processed(directory)
    chief = is_chief()
    result = train_distributed(data, config, strategy, log=print if chief else None)
    # Every worker reads the weights: a sync-on-read variable (BatchNorm's moving statistics)
    # is all-reduced when read, so a read on the chief alone would wait for absent peers.
    weights = result.model.get_weights()
    task = int(cluster_spec().get("task", {}).get("index", 0))
    path = args.summary.format(task=task) if args.summary else None
    if not (chief or (path and "{task}" in args.summary)):
        return 0
    summary = {"task": task, "strategy": name, "replicas": result.replicas,
               "workers": result.workers, "best_epoch": result.best_epoch,
               "best_metric": result.best_metric, "metric": result.metric,
               "history": result.history, "seconds": result.seconds,
               "weights_checksum": float(sum(np.abs(w).sum() for w in weights))}
    if args.save and chief:
        summary["run_dir"] = str(_save_run(args.config, overrides, data, weights, args.run_id))
    if path:
        Path(path).write_text(json.dumps(summary, indent=1))
    print(f"best epoch {result.best_epoch}: {result.metric} {result.best_metric:.4f} "
          f"({result.replicas} replicas on {result.workers} worker(s))")
    return 0


def _save_run(config_path: str, overrides: dict, data, weights: list[np.ndarray],
              run_id: str | None) -> Path:
    """Copy the trained weights into a plain (undistributed) model and save the run."""
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(config_path, overrides, run_id=run_id, log=print)
    system.prepare_data(reuse=True)
    plain = build_model(data, system.config)
    plain.set_weights(weights)
    system.model = plain
    return system.save()


if __name__ == "__main__":
    raise SystemExit(main())
