"""Most-popular and EASE on the MovieLens-100K benchmark protocol (DESIGN §5).

Usage: .venv/bin/python benchmarks/baselines_ml100k.py [ML100K_DIR]
(or set TWOTOWER_ML100K_DIR); the directory holds GroupLens's `u.data`.

The split is Microsoft Recommenders' python_stratified_split(ratio=0.75, filter_by="item",
seed=42). EASE's l2 is chosen on a validation split carved out of the training part by the
same stratified split (ratio 0.9, seed 42), then EASE is refitted on all of training. Raw
GroupLens ids (1..943 users, 1..1682 items) serve directly as indices, so row/column 0 is an
unused slot, as the out-of-vocabulary index is in the processed data.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.evaluation import (
    EASE,
    MostPopular,
    compare_models,
    ranking_metrics,
    top_k_from_scores,
    tune_ease,
)

K = 10
PUBLISHED_NDCG = {"most_popular": 0.252, "ease": 0.481}


def stratified_split(df: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, ...]:
    """MS python_stratified_split by item: per item, the first round(ratio * n) shuffled rows."""
    np.random.seed(seed)
    df = df.assign(random=np.random.rand(len(df)))
    ordered = df.sort_values(["i", "random"])
    groups = ordered.groupby("i")
    count = groups["i"].transform("count")
    rank = groups.cumcount() + 1
    first = rank <= np.round(ratio * count)
    return ordered[first].drop(columns="random"), ordered[~first].drop(columns="random")


def to_csr(df: pd.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary user x item matrix of a ratings frame."""
    ones = np.ones(len(df), dtype=np.float32)
    return sp.csr_matrix((ones, (df["u"].to_numpy(), df["i"].to_numpy())), shape=shape)


def evaluate(model, train: sp.csr_matrix, truth: sp.csr_matrix) -> dict[str, float]:
    """Top-k among items seen in `train`, excluding each user's `train` items."""
    candidates = np.asarray(train.sum(axis=0)).ravel() > 0
    top_idx, _ = top_k_from_scores(model.scores, train.shape[0], K, train, candidates)
    return ranking_metrics(top_idx, truth, (K,), num_items=int(candidates.sum()))


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tuning table and the comparison table."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("TWOTOWER_ML100K_DIR")
    if not directory:
        print(__doc__)
        return 2
    ratings = pd.read_csv(Path(directory) / "u.data", sep="\t", names=["u", "i", "r", "t"])
    shape = (ratings["u"].max() + 1, ratings["i"].max() + 1)
    train_df, test_df = stratified_split(ratings, 0.75, 42)
    inner_df, valid_df = stratified_split(train_df, 0.9, 42)
    train, test = to_csr(train_df, shape), to_csr(test_df, shape)
    print(
        f"train {len(train_df)} rows, test {len(test_df)} rows, "
        f"validation {len(valid_df)} rows carved from train"
    )

    started = time.perf_counter()
    best_l2, table = tune_ease(to_csr(inner_df, shape), to_csr(valid_df, shape), k=K)
    print(f"\nEASE l2 on validation ({time.perf_counter() - started:.1f}s), best {best_l2:g}:")
    print(table[["l2", f"ndcg@{K}", f"precision@{K}", f"map@{K}"]].to_string(index=False))

    results, fit_times = {}, {}
    for name, model in (("most_popular", MostPopular()), ("ease", EASE(l2=best_l2))):
        started = time.perf_counter()
        model.fit(train)
        fit_times[name] = time.perf_counter() - started
        results[name] = evaluate(model, train, test)
    comparison = compare_models(results, fit_times)
    comparison["published_ndcg@10"] = pd.Series(PUBLISHED_NDCG)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\nTest split, k={K}, EASE l2={best_l2:g}:")
        print(comparison.round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
