"""Scale benchmark: training cost and memory from 100K to 10M interactions, serving at 1M items.

    .venv/bin/python benchmarks/scale.py                      # 100K, 1M, 10M + serving at 1M
    .venv/bin/python benchmarks/scale.py --sizes 100000 1000000 --serving-items 200000
    .venv/bin/python benchmarks/scale.py --skip-training      # serving only
    .venv/bin/python benchmarks/scale.py --items 20000 --skip-serving   # fixed catalogue

Training: each size runs in its own process (so its peak RSS is its own): synthetic data with
100 interactions per user and one item per 500 interactions (at least 1,000), the data stage
(`DataPreprocessor`: generate, validate, split, negatives, save), then two epochs of
`Trainer` with config.json's model and batch size, held to one ensemble member and the BCE
loss with 16 negatives per positive (`SCALE_SETTINGS`). The ML-100K quality settings
(several members, a softmax over thousands of shared negatives) multiply the cost of a step
by a factor that does not depend on the number of interactions; the growth with data size is
measured on the cheaper setting. The cost per interaction is the second
epoch's training time (the first pays for tracing) divided by the training pairs; validation
is not counted. Peak memory is the process's peak RSS (interpreter, TensorFlow, data, model).
A step runs the item tower once per distinct item of its positives and negatives, so a
small catalogue (1,000 items at 100K) makes steps cheaper than a large one; `--items` holds
the catalogue fixed to separate that from the growth with the number of interactions.

Serving at `--serving-items` items (d = 64): brute force (numpy, exact) against ScaNN (default
settings for the catalogue size) on the same vectors: single-query latency p50/p99 over
`--queries` queries, recall@10 against exact, and the same two searches as TensorFlow ops (the
path of the exported SavedModel). Two item sets: a Gaussian mixture (2,000 clusters), and,
when the training part ran, the largest run's trained item embeddings, each jittered into
copies up to the catalogue size, queried with that run's trained user embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # first: this checkout's package, even where another is installed
import numpy as np

ROOT = _common.ROOT
# peak_gib is in GB (10^9 bytes) despite its name; us_per_interaction and data_stage_s are
# the limits for the largest size (10M interactions by default).
THRESHOLDS = {"growth": 1.5, "peak_gib": 4.0, "speedup": 10.0, "recall": 0.95,
              "us_per_interaction": 10.0, "data_stage_s": 60.0}
SCALE_SETTINGS = {"model.ensemble_size": 1, "model.ensemble_member_overrides": [],
                  "training.loss": "bce", "data.num_negatives": 16,
                  "training.in_batch_negatives": False, "training.logq_correction": False}


def _peak_gib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def run_one(size: int, workdir: Path, save_embeddings: bool, items: int | None = None) -> dict:
    """Data stage + two training epochs for `size` interactions in this process (`items`:
    the catalogue size, default one item per 500 interactions, at least 1,000)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from twotower_utils.config import load_config
    from twotower_utils.data.preprocessing import DataPreprocessor, load_processed

    users, items = max(size // 100, 10), items or max(size // 500, 1000)
    overrides = {
        "data.dataset": "synthetic", "data.user_features": None, "data.item_features": None,
        "data.synthetic": {"num_users": users, "num_items": items, "num_interactions": size,
                           "num_clusters": 8, "seed": 0},
        "data.split.method": "random", "training.epochs": 2, **SCALE_SETTINGS,
        "training.early_stopping_patience": 5,
        **{f"paths.{name}": str(workdir / str(size) / name)
           for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")},
    }
    config = load_config(ROOT / "config.json", overrides)
    started = time.perf_counter()
    DataPreprocessor(config).run()
    preprocess = time.perf_counter() - started
    data = load_processed(config.processed_dir())
    after_data = _peak_gib()

    from twotower_utils.model.training import Trainer
    from twotower_utils.model.two_tower import build_model

    model = build_model(data, config)
    trainer = Trainer(model, config, data.train["user_idx"].to_numpy(),
                      data.train["item_idx"].to_numpy(), data.interactions("validation"),
                      data.history, checkpoint_dir=workdir / str(size) / "checkpoints")
    result = trainer.fit()
    first, second = result.history[0], result.history[-1]
    pairs = len(data.train)
    steady, steady_cpu = steady_step_us(model, data, config.training.batch_size)
    if save_embeddings:
        np.savez(workdir / "embeddings.npz",
                 users=model.user_embeddings(np.arange(1, data.num_users), data.history),
                 items=model.item_embeddings()[1:])
    return {"interactions": int(data.stats["num_interactions"]), "users": users,
            "items": items, "train_pairs": pairs, "preprocess_s": preprocess,
            "epoch1_train_s": first["train_seconds"], "epoch2_train_s": second["train_seconds"],
            "us_per_interaction": second["train_seconds"] / pairs * 1e6,
            "steady_us_per_interaction": steady, "cpu_us_per_interaction": steady_cpu,
            "val_ndcg@10": second["val_ndcg@10"], "peak_gib_after_data": after_data,
            "peak_gib": _peak_gib(), "timings": data.stats.get("timings_seconds", {})}


def steady_step_us(model, data, batch_size: int, blocks: int = 8,
                   steps: int = 15) -> tuple[float, float]:
    """(wall, CPU) microseconds per interaction of training steps, each the fastest of
    `blocks` blocks of `steps` steps. Other processes on the machine only ever add wall time;
    CPU time (all threads of this process) barely moves with them, so its ratio across sizes
    is the steadier measure on a shared machine."""
    import tensorflow as tf

    spec = tf.TensorSpec([None], tf.int32)
    step = tf.function(lambda u, i: model.train_step({"user_idx": u, "item_idx": i})["loss"],
                       input_signature=[spec, spec], autograph=False)
    rng = np.random.default_rng(1)
    users = data.train["user_idx"].to_numpy().astype(np.int32)
    items = data.train["item_idx"].to_numpy().astype(np.int32)
    step(users[:batch_size], items[:batch_size])
    best, best_cpu = np.inf, np.inf
    for _ in range(blocks):
        rows = rng.integers(0, len(users), (steps, batch_size))
        started, cpu = time.perf_counter(), time.process_time()
        for chosen in rows:
            step(users[chosen], items[chosen]).numpy()
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    scale = 1e6 / (steps * batch_size)
    return best * scale, best_cpu * scale


def training(sizes: list[int], workdir: Path, items: int | None = None) -> list[dict]:
    """One subprocess per size; prints a line each and the threshold checks."""
    rows = []
    for size in sizes:
        out = workdir / f"train-{size}.json"
        command = [sys.executable, __file__, "--one", str(size), "--workdir", str(workdir),
                   "--json", str(out)] + (["--save-embeddings"] if size == max(sizes) else [])
        command += ["--items", str(items)] if items else []
        subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        row = json.loads(out.read_text())
        rows.append(row)
        print(f"train {row['interactions']:>11,} interactions ({row['users']:,} users, "
              f"{row['items']:,} items): data stage {row['preprocess_s']:.1f} s; epoch 2 "
              f"{row['epoch2_train_s']:.1f} s for {row['train_pairs']:,} pairs = "
              f"{row['us_per_interaction']:.2f} us/interaction (step blocks: wall "
              f"{row['steady_us_per_interaction']:.2f}, CPU {row['cpu_us_per_interaction']:.2f};"
              f" epoch 1 with tracing "
              f"{row['epoch1_train_s']:.1f} s); val ndcg@10 {row['val_ndcg@10']:.3f}; peak RSS "
              f"{row['peak_gib']:.2f} GiB ({row['peak_gib_after_data']:.2f} after the data "
              "stage)", flush=True)
    growth = rows[-1]["us_per_interaction"] / rows[0]["us_per_interaction"]
    steady = rows[-1]["steady_us_per_interaction"] / rows[0]["steady_us_per_interaction"]
    cpu = rows[-1]["cpu_us_per_interaction"] / rows[0]["cpu_us_per_interaction"]
    peak = max(row["peak_gib"] for row in rows)
    print(f"training cost per interaction grows {growth:.2f}x from {rows[0]['interactions']:,}"
          f" to {rows[-1]['interactions']:,} (limit {THRESHOLDS['growth']}x): "
          f"{'PASS' if growth <= THRESHOLDS['growth'] else 'FAIL'} (epoch wall times; step "
          f"blocks: wall {steady:.2f}x, CPU {cpu:.2f}x)")
    print(f"peak memory {peak:.2f} GiB (limit {THRESHOLDS['peak_gib']:.0f} GB = "
          f"{THRESHOLDS['peak_gib'] * 1e9 / 2**30:.2f} GiB): "
          f"{'PASS' if peak * 2**30 < THRESHOLDS['peak_gib'] * 1e9 else 'FAIL'}")
    largest = rows[-1]
    for label, value, limit, unit in (
            ("training cost per interaction per epoch", largest["us_per_interaction"],
             THRESHOLDS["us_per_interaction"], "us"),
            ("data stage", largest["preprocess_s"], THRESHOLDS["data_stage_s"], "s")):
        print(f"{label} at {largest['interactions']:,} interactions: {value:.2f} {unit} "
              f"(limit {limit:g} {unit}): {'PASS' if value <= limit else 'FAIL'}")
    return rows


def mixture(num_items: int, queries: int, dim: int = 64, seed: int = 0):
    """Gaussian-mixture item and query vectors (2,000 clusters, unit-scale noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2000, dim)).astype(np.float32)
    items = centers[rng.integers(0, 2000, num_items)] * 0.5
    items += rng.normal(scale=0.5, size=items.shape).astype(np.float32)
    users = centers[rng.integers(0, 2000, queries)] * 0.5
    users += rng.normal(scale=0.5, size=users.shape).astype(np.float32)
    return items.astype(np.float32), users.astype(np.float32)


def trained(path: Path, num_items: int, queries: int, seed: int = 0):
    """The trained item vectors jittered into `num_items` copies, and trained user vectors."""
    rng = np.random.default_rng(seed)
    with np.load(path) as archive:
        base, users = archive["items"], archive["users"]
    noise = 0.25 * base.std(axis=0)
    items = base[rng.integers(0, len(base), num_items)]
    items = items + rng.normal(size=items.shape).astype(np.float32) * noise
    return items.astype(np.float32), users[rng.choice(len(users), queries, replace=False)]


def serving(name: str, items: np.ndarray, users: np.ndarray, k: int = 10) -> dict:
    """Brute force vs ScaNN on one item set; prints the comparison and the checks."""
    from twotower_utils.serving.indexes import BruteForceIndex, ScannIndex, measure_index

    brute = BruteForceIndex(items)
    exact = brute.search(users, k)[0]
    base = measure_index(brute, users, k, exact, latency_queries=len(users))
    scann = ScannIndex(items)
    approx = measure_index(scann, users, k, exact, latency_queries=len(users))
    tf_base, tf_scann = tf_latencies(items, users, scann.params, k)
    speedup = min(base["p50_ms"] / approx["p50_ms"], tf_base[0] / tf_scann[0])
    p = scann.params
    print(f"serve {name}: {len(items):,} items x {items.shape[1]} dims, {len(users)} queries, "
          f"one at a time\n"
          f"  brute force (numpy)  p50 {base['p50_ms']:8.3f} ms  p99 {base['p99_ms']:8.3f} ms  "
          f"recall@{k} 1.0000\n"
          f"  ScaNN (pybind)       p50 {approx['p50_ms']:8.3f} ms  p99 {approx['p99_ms']:8.3f} "
          f"ms  recall@{k} {approx['recall']:.4f}  (leaves {p.num_leaves}, searched "
          f"{p.num_leaves_to_search}, reorder {p.reorder}; built in {scann.build_seconds:.1f} s)"
          f"\n  brute force (TF ops) p50 {tf_base[0]:8.3f} ms  p99 {tf_base[1]:8.3f} ms\n"
          f"  ScaNN (TF ops)       p50 {tf_scann[0]:8.3f} ms  p99 {tf_scann[1]:8.3f} ms\n"
          f"  ScaNN is {speedup:.0f}x faster per query (p50, the lower of the numpy/pybind "
          f"and TF speed-ups; limit {THRESHOLDS['speedup']:.0f}x):"
          f" {'PASS' if speedup >= THRESHOLDS['speedup'] else 'FAIL'}; recall@{k} "
          f"{approx['recall']:.4f} (limit {THRESHOLDS['recall']}): "
          f"{'PASS' if approx['recall'] >= THRESHOLDS['recall'] else 'FAIL'}", flush=True)
    return {"name": name, "brute": base, "scann": approx, "speedup": speedup}


def tf_latencies(items: np.ndarray, users: np.ndarray, params, k: int):
    """p50/p99 ms of one-query searches with TF ops: matmul + top_k, and ScaNN's ops."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    from scann.scann_ops.py import scann_ops

    from twotower_utils.serving.indexes import apply_scann_params

    vectors = tf.Variable(items, trainable=False)
    state = apply_scann_params(scann_ops.builder(items, k, "dot_product"),
                               params).build().serialize_to_module()
    spec = [tf.TensorSpec([None, items.shape[1]], tf.float32)]

    @tf.function(input_signature=spec, autograph=False)
    def brute(q):
        return tf.math.top_k(tf.matmul(q, vectors, transpose_b=True), k)

    @tf.function(input_signature=spec, autograph=False)
    def approximate(q):
        return scann_ops.scann_search_batched(
            state.recreate_handle(), q, k, params.reorder or -1,
            params.num_leaves_to_search if params.num_leaves else -1, False)

    out = []
    for fn in (brute, approximate):
        fn(users[:1])
        times = []
        for i in range(len(users)):
            started = time.perf_counter()
            fn(users[i:i + 1])
            times.append((time.perf_counter() - started) * 1000)
        out.append((float(np.percentile(times, 50)), float(np.percentile(times, 99))))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the parts asked for; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--items", type=int, default=None,
                        help="one catalogue size for every training size (default: "
                        "interactions / 500, at least 1,000)")
    parser.add_argument("--serving-items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--workdir", default=None, help="scratch data (default: a temp dir)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--save-embeddings", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="twotower-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        result = run_one(args.one, workdir, args.save_embeddings, args.items)
        Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    if not args.skip_training:
        training(sorted(args.sizes), workdir, args.items)
    if not args.skip_serving:
        serving("Gaussian mixture", *mixture(args.serving_items, args.queries))
        if (workdir / "embeddings.npz").is_file():
            serving("trained geometry", *trained(workdir / "embeddings.npz",
                                                 args.serving_items, args.queries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
