"""Time the evaluation notebook's work (`04_evaluation`) on a 9K-item synthetic catalogue.

Usage: .venv/bin/python benchmarks/evaluation_scale.py [--users 700] [--items 9000]
       [--interactions 100000] [--direct]

The catalogue is the project's synthetic generator (long-tailed popularity, item features
only: `data.user_features = {}`), split by the shipped config's method. Timed, as the
notebook runs them: the test protocol, most-popular and the similarity baseline (EASE with
its l2 tuned on validation over the full grid, or item-kNN where it stands in), the two-tower
lists (random 64-d embeddings stand in for a trained model: only their shape matters here),
the metric table at every k of the config, and the user and item bucket tables. Not timed:
generating and preprocessing the data (notebook 02's work), and the TensorFlow model load
and dataset reload at the end of the notebook. `--direct` also times one EASE solve the way
it was done before the dual form (a dense `I x I` inverse), for comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import _common  # first: the repository root on sys.path
import numpy as np

from twotower_utils.config import load_config
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed
from twotower_utils.reports import analysis

PROJECT_ROOT = _common.ROOT
LIMIT_SECONDS = 30.0


def main(argv: list[str] | None = None) -> int:
    """Build the catalogue, time each step; prints one line per step and the total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=700)
    parser.add_argument("--items", type=int, default=9_000)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--direct", action="store_true",
                        help="also time one direct I x I EASE inverse (slow at 9K items)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        config = load_config(PROJECT_ROOT / "config.json", {
            "data.dataset": "synthetic",
            "data.synthetic.num_users": args.users,
            "data.synthetic.num_items": args.items,
            "data.synthetic.num_interactions": args.interactions,
            "data.user_features": {},
            "paths.raw_dir": f"{scratch}/raw",
            "paths.processed_dir": f"{scratch}/processed",
        })
        data = load_processed(DataPreprocessor(config).run())
        print(f"catalogue: {data.num_users - 1:,} users x {data.num_items - 1:,} items, "
              f"{len(data.train):,} / {len(data.validation):,} / {len(data.test):,} "
              f"train / validation / test rows, split {config.data.split.method!r} "
              f"(generated and preprocessed in {time.perf_counter() - started:.1f} s, "
              "not timed below)")
        k_values, metrics = config.evaluation.k_values, config.evaluation.metrics

        steps: dict[str, float] = {}

        def timed(name, fn):
            began = time.perf_counter()
            result = fn()
            steps[name] = time.perf_counter() - began
            return result

        protocol = timed("test protocol", lambda: analysis.EvalProtocol(data, k_values))
        rng = np.random.default_rng(0)
        users, items = (rng.standard_normal((n, 64)).astype(np.float32)
                        for n in (data.num_users, data.num_items))
        top_lists = {"two_tower": timed("two-tower lists", lambda: analysis.embedding_top_list(
            users, items, protocol, protocol.depth))}
        lists, fit_seconds, tuning = timed(
            "baselines (most-popular + tuned EASE/kNN)",
            lambda: analysis.baseline_top_lists(data, protocol.depth))
        top_lists.update(lists)
        table = timed("metric table", lambda: analysis.metric_table(
            top_lists, protocol.relevant, k_values, metrics, int(protocol.candidates.sum())))
        timed("user and item buckets", lambda: (
            analysis.metrics_by_user_bucket(top_lists, protocol.relevant,
                                            analysis.user_activity(data), k=10),
            analysis.recall_by_item_bucket(top_lists, protocol.relevant,
                                           analysis.item_popularity(data), k=10)))

        print(f"\n{tuning.attrs['note']}")
        print(tuning.round(4).to_string())
        print("\ntest metrics @10:")
        print(table[[c for c in table.columns if c.endswith("@10")]].round(4).to_string())
        print()
        for name, seconds in steps.items():
            print(f"{name:<40} {seconds:6.2f} s")
        total = sum(steps.values())
        verdict = "within" if total < LIMIT_SECONDS else "OVER"
        print(f"{'total':<40} {total:6.2f} s   ({verdict} the {LIMIT_SECONDS:.0f} s limit)")

        if args.direct:
            train = data.interactions("train")
            train.data[:] = 1.0
            began = time.perf_counter()
            gram = (train.T @ train).toarray().astype(np.float64)
            gram[np.diag_indices_from(gram)] += 500.0
            np.linalg.inv(gram)
            print(f"\nfor comparison, one direct {gram.shape[0]:,} x {gram.shape[0]:,} inverse "
                  f"(the former per-l2 cost, x{len(tuning)} l2 values): "
                  f"{time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
