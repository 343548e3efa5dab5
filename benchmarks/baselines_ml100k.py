"""Most-popular, EASE and item-kNN on the MovieLens-100K benchmark protocol.

Usage: .venv/bin/python benchmarks/baselines_ml100k.py [--ml100k-dir DIR]
(or set TWOTOWER_ML100K_DIR; without either, the data is fetched as `make run` does).

The split is the project's own benchmark split (DataPreprocessor, `data.split.method =
"benchmark"`), identical to Microsoft Recommenders' python_stratified_split(ratio=0.75,
filter_by="item", seed=42). EASE's l2 is chosen on the validation split carved out of the
training part, then EASE is refitted on all of training (train + validation) and scored on
test: recommendations among items seen in training, excluding each user's training items.
Item-kNN (what stands in for EASE on catalogues too large for it) is tuned and scored the
same way, its neighbour count chosen on validation, to show what the stand-in gives up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import _common  # first: the repository root on sys.path
import numpy as np
import pandas as pd

from twotower_utils.config import load_config
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed
from twotower_utils.evaluation.metrics import (
    EASE,
    ItemKNN,
    MostPopular,
    compare_models,
    ranking_metrics,
    top_k_from_scores,
    tune_ease,
    tune_item_knn,
)

K = 10
PUBLISHED_NDCG = {"most_popular": 0.252, "ease": 0.481}
PROJECT_ROOT = _common.ROOT


def evaluate(model, train, truth) -> dict[str, float]:
    """Top-k among items seen in `train`, excluding each user's `train` items."""
    candidates = np.asarray(train.sum(axis=0)).ravel() > 0
    top_idx, _ = top_k_from_scores(model.scores, train.shape[0], K, train, candidates)
    return ranking_metrics(top_idx, truth, (K,), num_items=int(candidates.sum()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the tuning table and the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_ml100k_option(parser)
    args = parser.parse_args(argv)
    _common.use_ml100k_dir(args)
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(PROJECT_ROOT / "config.json", {
            **_common.ML100K_OVERRIDES, "paths.processed_dir": scratch})
        data = load_processed(DataPreprocessor(config).run())
    inner, validation, test = (data.interactions(s) for s in ("train", "validation", "test"))
    train = inner + validation
    print(f"train {train.nnz} rows ({validation.nnz} of them the validation split), "
          f"test {test.nnz} rows")

    started = time.perf_counter()
    best_l2, table = tune_ease(inner, validation, k=K)
    print(f"\nEASE l2 on validation ({time.perf_counter() - started:.1f}s, {table.attrs['form']} "
          f"form, eigendecomposition {table.attrs['decomposition_seconds']:.2f}s), "
          f"best {best_l2:g}:")
    print(table[["l2", f"ndcg@{K}", f"precision@{K}", f"map@{K}"]].to_string(index=False))
    started = time.perf_counter()
    best_n, knn_table = tune_item_knn(inner, validation, k=K)
    print(f"\nitem-kNN neighbours on validation ({time.perf_counter() - started:.1f}s), "
          f"best {best_n}:")
    print(knn_table[["neighbours", f"ndcg@{K}", f"precision@{K}", f"map@{K}"]]
          .to_string(index=False))

    results, fit_times = {}, {}
    for name, model in (("most_popular", MostPopular()), ("ease", EASE(l2=best_l2)),
                        ("item_knn", ItemKNN(neighbours=best_n))):
        started = time.perf_counter()
        model.fit(train)
        fit_times[name] = time.perf_counter() - started
        results[name] = evaluate(model, train, test)
    comparison = compare_models(results, fit_times)
    comparison["published_ndcg@10"] = pd.Series(PUBLISHED_NDCG)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\nTest split, k={K}, EASE l2={best_l2:g}, item-kNN neighbours={best_n}:")
        print(comparison.round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
