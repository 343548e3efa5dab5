"""Try configuration changes on the MovieLens-100K benchmark split, one training run each.

    .venv/bin/python benchmarks/levers.py GRID.json [--out levers.jsonl] [--threads 1]
        [--ml100k-dir DIR]

GRID.json maps a row name to config overrides (dotted keys), e.g.
`{"base": {}, "d128": {"model.embedding_dim": 128}}`. Each row trains the two-tower model
with config.json plus its overrides and appends one JSON line: the best validation nDCG@10
(what a change is judged by: hyperparameters are chosen on validation only; for an ensemble,
that of its joined early-stopped members), the best epoch,
and the test nDCG@10, precision@10 and recall@10 (reported, never used to choose). With
`--threads 1` two grids can run side by side on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import _common  # noqa: E402  (first: the repository root on sys.path)

ROOT = _common.ROOT


def main(argv: list[str] | None = None) -> int:
    """Run every row of the grid; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("--config", type=Path, default=ROOT / "config.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "levers.jsonl")
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0 = all cores)")
    _common.add_ml100k_option(parser)
    args = parser.parse_args(argv)
    _common.use_ml100k_dir(args)
    grid = json.loads(args.grid.read_text())
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from twotower_utils.system import TwoTowerRecallSystem

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = {f"paths.{name}": str(Path(scratch) / name)
                 for name in ("processed_dir", "models_dir", "logs_dir")}
        for name, overrides in grid.items():
            started = time.perf_counter()
            system = TwoTowerRecallSystem(
                args.config, {**_common.ML100K_OVERRIDES, **paths, **overrides},
                run_id=name)
            system.prepare_data(reuse=True)
            result = system.train_model(save=False)
            test = system.evaluate_model(k_values=[10], metrics=("ndcg", "precision", "recall"))
            # An ensemble is judged by its joined members' validation metric.
            val = result.extra.get(f"ensemble_val_{result.metric}", result.best_metric)
            row = {"name": name, f"val_{result.metric}": round(val, 4),
                   "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   **{f"test_{k}": round(v, 4) for k, v in test.items()},
                   "seconds": round(time.perf_counter() - started, 1), "overrides": overrides}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
