"""ScaNN's recall/latency trade-off over leaves, leaves searched and reordering.

    .venv/bin/python benchmarks/ann_tradeoff.py                          # 1M mixture items
    .venv/bin/python benchmarks/ann_tradeoff.py --run models/<run_id>    # a trained run
    .venv/bin/python benchmarks/ann_tradeoff.py --items 200000 --leaves 200 500 \
        --searched 0.05 0.1 --reorder 0 100 500

Prints one row per setting: recall@k against exact brute force, single-query latency p50/p99
and the speed-up over brute force (p50). With `--run`, the run's candidate item embeddings
are indexed and its users' embeddings are the queries (as in `recommend_items`, without the
seen-item exclusion); otherwise a Gaussian mixture (2,000 clusters, d = 64) of `--items`.
`--searched` values below 1 are shares of the leaves, others are counts.
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (first: the repository root on sys.path)
import numpy as np
from scale import mixture

from twotower_utils.serving.indexes import format_grid, scann_grid


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse `argv`, run the grid, print the table; returns its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a saved run directory (models/<run_id>)")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--leaves", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--searched", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--reorder", type=int, nargs="+", default=[0, 100, 500])
    args = parser.parse_args(argv)
    candidates = None
    if args.run:
        from twotower_utils.serving.run import ServingRun

        run = ServingRun.from_dir(args.run)
        items, candidates = np.asarray(run.item_vectors), run.candidates
        rng = np.random.default_rng(0)
        users = np.asarray(run.user_vectors)[1:]
        users = users[rng.choice(len(users), min(args.queries, len(users)), replace=False)]
        leaves = [n for n in args.leaves if n <= candidates.sum()] or [
            max(1, int(np.sqrt(candidates.sum())))]
        source = f"run {args.run}"
    else:
        items, users = mixture(args.items, args.queries)
        leaves, source = args.leaves, "Gaussian mixture"
    print(f"{source}: {int(candidates.sum()) if candidates is not None else len(items):,} "
          f"items x {items.shape[1]} dims, {len(users)} queries, k = {args.k}", flush=True)
    rows = scann_grid(items, users, args.k, leaves, args.searched, args.reorder,
                      candidates=candidates, latency_queries=len(users))
    print(format_grid(rows, args.k))
    return rows


if __name__ == "__main__":
    main()
