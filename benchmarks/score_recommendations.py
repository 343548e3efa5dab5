"""Score a recommendations CSV against a test CSV, independently of `twotower_utils`.

    python benchmarks/score_recommendations.py RECOMMENDATIONS.csv TEST.csv [--k 10]

RECOMMENDATIONS.csv has `user_id,item_id,rank` (rank 1 = best), TEST.csv `user_id,item_id`.
Prints one JSON object of precision@k, recall@k, ndcg@k, map (the Microsoft Recommenders
benchmark's MAP), map@k and hit_rate@k.

This is a second, deliberately plain implementation of the protocol (the definitions of the
Microsoft Recommenders benchmark): the standard library only, one user at a time, no shared
code with `twotower_utils.evaluation.metrics`. The quality benchmark cross-checks its table with it,
and a test compares the two on random cases.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict


def read_pairs(path: str, with_rank: bool) -> list[tuple]:
    """Rows of a CSV as (user_id, item_id[, rank]) tuples, ids kept as strings."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return [(row["user_id"], row["item_id"]) + ((int(row["rank"]),) if with_rank else ())
                for row in reader]


def score(recommendations: list[tuple], test: list[tuple], k: int = 10) -> dict[str, float]:
    """Metrics@k of ranked `(user, item, rank)` recommendations against `(user, item)` truth.

    Users count when they are in both inputs (as in the benchmark); each user's list is
    ordered by rank and cut at k. Returns the means over those users.
    """
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for user, item, rank in recommendations:
        ranked[str(user)].append((rank, str(item)))
    relevant: dict[str, set[str]] = defaultdict(set)
    for user, item in test:
        relevant[str(user)].add(str(item))
    users = [user for user in relevant if user in ranked]
    if not users:
        raise ValueError("no user is in both the recommendations and the test set")
    totals = dict.fromkeys(
        (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", "map", f"map@{k}", f"hit_rate@{k}"), 0.0)
    for user in users:
        truth = relevant[user]
        top = [item for _, item in sorted(ranked[user])[:k]]
        hits, dcg, precision_sum = 0, 0.0, 0.0
        for position, item in enumerate(top, start=1):
            if item in truth:
                hits += 1
                dcg += 1.0 / math.log2(position + 1)
                precision_sum += hits / position
        ideal = sum(1.0 / math.log2(p + 1) for p in range(1, min(k, len(truth)) + 1))
        totals[f"precision@{k}"] += hits / k
        totals[f"recall@{k}"] += hits / len(truth)
        totals[f"ndcg@{k}"] += dcg / ideal
        totals["map"] += precision_sum / len(truth)
        totals[f"map@{k}"] += precision_sum / min(k, len(truth))
        totals[f"hit_rate@{k}"] += 1.0 if hits else 0.0
    return {name: total / len(users) for name, total in totals.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: print the scores of RECOMMENDATIONS.csv against TEST.csv as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recommendations")
    parser.add_argument("test")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    result = score(read_pairs(args.recommendations, True), read_pairs(args.test, False), args.k)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
