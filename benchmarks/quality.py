"""MovieLens-100K quality benchmark: the two-tower model against the baselines, a loss study,
and cold items.

    .venv/bin/python benchmarks/quality.py                      # everything (~12 min here)
    .venv/bin/python benchmarks/quality.py --seeds 0 --skip-loss-study --skip-cold-items
    options: --config config.json  --set KEY VALUE  --out benchmarks/results/quality
             --ml100k-dir DIR  --loss-study-seeds N

Protocol (DESIGN.md §5): the benchmark split; recommendations among the items seen in
training, excluding each user's train + validation items; metrics at k = 10. The two-tower
model uses config.json as it is: its hyperparameters were chosen on the validation split
(benchmarks/README.md lists what was tried), and each seed (`training.seed`) early-stops on
validation. Baselines on the same split: most-popular and EASE (l2 tuned on validation, then
refitted on train + validation).

Loss study: one model (a single member, no refit), the same data and budget (config.json's
epochs and early stopping) with only the loss swapped: BCE with 16 uniform negatives, BCE with
16 popularity negatives and logQ, TFRS's in-batch softmax (with and without logQ), and the
softmax over the whole training catalogue.

Cold items: the cold-items split (the test items never appear in training), the model placing
them from their features only, against popularity-by-feature; ranked among the cold items.

Writes to --out: `results.json` (every number, per seed and mean/std), and
`recommendations.csv` (`user_id,item_id,rank`: the test users' top 10 from the first seed's
model). That CSV is scored again by `benchmarks/score_recommendations.py`, an independent
implementation of the metrics; the run fails if the two disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import score_recommendations  # noqa: E402

from twotower_utils.analysis import baseline_top_lists, metric_table  # noqa: E402
from twotower_utils.evaluation import PopularityByFeature, top_k_from_scores  # noqa: E402
from twotower_utils.ranking import ranking_metrics  # noqa: E402

K = 10
METRICS = ("ndcg", "precision", "recall", "map", "map_at_k", "hit_rate")
SHOWN = ("ndcg@10", "precision@10", "recall@10", "map@10")  # "map@10" is the benchmark's MAP
PUBLISHED_NDCG = {"most_popular": 0.252, "BPR": 0.445, "BiVAE": 0.469, "iALS (tuned)": 0.474,
                  "EASE (tuned)": 0.481}
# The loss study holds everything else fixed at one member and no refit (a single model's
# budget: config.json's epochs and early stopping), so only the loss differs.
LOSS_STUDY_BASE = {"model.ensemble_size": 1, "training.refit_with_validation": False,
                   "training.in_batch_negatives": False}
LOSS_STUDY = {
    "bce_uniform": {"training.loss": "bce", "data.num_negatives": 16,
                    "data.negative_sampling": "uniform", "training.logq_correction": False},
    "bce_popularity_logq": {"training.loss": "bce", "data.num_negatives": 16,
                            "data.negative_sampling": "popularity",
                            "training.logq_correction": True},
    "tfrs_in_batch_softmax": {"training.loss": "softmax", "data.negative_sampling": "uniform",
                              "training.logq_correction": False},
    "tfrs_in_batch_softmax_logq": {"training.loss": "softmax",
                                   "data.negative_sampling": "popularity",
                                   "training.logq_correction": True},
    "full_softmax": {"training.loss": "sampled_softmax", "training.softmax_negatives": 0,
                     "data.negative_sampling": "uniform", "training.logq_correction": False},
}
COLD_K = (10, 50)


def summarise(runs: list[dict]) -> dict:
    """{metric: {"mean", "std", "per_seed"}} over runs (std with ddof=0; 0 for one run)."""
    return {name: {"mean": float(np.mean([r[name] for r in runs])),
                   "std": float(np.std([r[name] for r in runs])),
                   "per_seed": [r[name] for r in runs]} for name in runs[0]}


def train_two_tower(config: Path, overrides: dict, seed: int, run_id: str):
    """Train one seed; returns (system, test metrics at K plus timings)."""
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(config, {**overrides, "training.seed": seed}, run_id=run_id,
                                  log=None)
    system.prepare_data(reuse=True)
    started = time.perf_counter()
    result = system.train_model(save=False)
    metrics = system.evaluate_model(k_values=[K], metrics=METRICS)
    metrics.update(fit_seconds=time.perf_counter() - started, best_epoch=result.best_epoch)
    return system, metrics


def check_recommendations(system, out: Path, workdir: Path, metrics: dict) -> dict:
    """Write recommendations.csv, score it independently, and insist on agreement."""
    data = system.data
    test_users = data.test["user_id"].unique()
    recs = system.recommend_batch(test_users, top_k=K)
    recs[["user_id", "item_id", "rank"]].to_csv(out / "recommendations.csv", index=False)
    truth = workdir / "test.csv"  # MovieLens rows stay out of the results folder
    data.test[["user_id", "item_id"]].to_csv(truth, index=False)
    independent = score_recommendations.score(
        score_recommendations.read_pairs(str(out / "recommendations.csv"), True),
        score_recommendations.read_pairs(str(truth), False), K)
    ours = {"ndcg@10": metrics["ndcg@10"], "precision@10": metrics["precision@10"],
            "recall@10": metrics["recall@10"], "map": metrics["map@10"],
            "map@10": metrics["map_at_k@10"], "hit_rate@10": metrics["hit_rate@10"]}
    for name, value in independent.items():
        if abs(value - ours[name]) > 1e-6:
            raise SystemExit(f"metric mismatch on {name}: evaluate_model {ours[name]:.6f} vs "
                             f"recommendations.csv scored independently {value:.6f}")
    return independent


def baselines(system) -> dict:
    """Most-popular and EASE test metrics at K on the system's prepared data."""
    started = time.perf_counter()
    lists, seconds, tuning = baseline_top_lists(system.data, K)
    table = metric_table(lists, system.data.interactions("test"), (K,), METRICS)
    chosen = float(tuning.index[tuning["chosen"]][0])
    rows = {name: {**table.loc[name].to_dict(), "fit_seconds": seconds[name]}
            for name in table.index}
    rows["ease"]["l2"] = chosen
    print(f"baselines in {time.perf_counter() - started:.1f} s (EASE l2 {chosen:g} on "
          "validation)")
    return rows


def cold_items(config: Path, overrides: dict, seed: int) -> dict:
    """Recall/nDCG among the cold test items: the model vs popularity-by-feature."""
    cold = {**overrides, "data.split.method": "cold_items",
            "paths.processed_dir": overrides["paths.processed_dir"] + "-cold"}
    system, _ = train_two_tower(config, cold, seed, "quality-cold")
    data = system.data
    candidates = np.zeros(data.num_items, dtype=bool)
    candidates[data.test["item_idx"].to_numpy()] = True
    model = system.evaluate_model(k_values=COLD_K, metrics=("recall", "ndcg"),
                                  candidates=candidates)
    seen = (data.interactions("train") + data.interactions("validation")).tocsr()
    baseline = PopularityByFeature().fit(seen, data.side_features("item"),
                                         data.feature_specs["item"])
    relevant = data.interactions("test")
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    top, _ = top_k_from_scores(lambda rows: baseline.scores(users[rows]), len(users),
                               max(COLD_K), exclude=seen[users], candidates=candidates)
    popularity = ranking_metrics(top, relevant[users], COLD_K, ("recall", "ndcg"))
    return {"cold_items": int(candidates.sum()), "test_rows": len(data.test),
            "users": len(users), "two_tower": model, "popularity_by_feature": popularity}


def print_table(title: str, rows: dict[str, dict]) -> None:
    """One line per model: mean ± std of the shown metrics (plain value without std)."""
    print(f"\n{title}")
    print(f"{'model':<28}" + "".join(f"{name:>18}" for name in SHOWN) + f"{'fit s':>14}")
    for model, row in rows.items():
        cells = []
        for name in (*SHOWN, "fit_seconds"):
            value, digits = row[name], 1 if name == "fit_seconds" else 4
            cells.append(f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
                         if isinstance(value, dict) else f"{value:.{digits}f}")
        print(f"{model:<28}" + "".join(f"{c:>18}" for c in cells[:-1]) + f"{cells[-1]:>14}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.json")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a config key (dotted); VALUE parsed as JSON if it can be")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss-study-seeds", type=int, default=1,
                        help="how many of --seeds each loss-study variant trains with")
    parser.add_argument("--skip-loss-study", action="store_true")
    parser.add_argument("--skip-cold-items", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    parser.add_argument("--ml100k-dir", help="GroupLens ml-100k directory (default: "
                        "$TWOTOWER_ML100K_DIR, else fetched as `make run` does)")
    args = parser.parse_args(argv)
    if args.ml100k_dir:
        os.environ["TWOTOWER_ML100K_DIR"] = args.ml100k_dir
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        overrides = {"data.dataset": "movielens-100k", "data.split.method": "benchmark",
                     "paths.raw_dir": str(ROOT / "data" / "raw"),
                     **{f"paths.{name}": str(workdir / name)
                        for name in ("processed_dir", "models_dir", "logs_dir")}}
        for key, value in args.set:
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        runs = []
        for position, seed in enumerate(args.seeds):
            system, metrics = train_two_tower(args.config, overrides, seed, f"quality-{seed}")
            print(f"two-tower seed {seed}: nDCG@10 {metrics['ndcg@10']:.4f}, best epoch "
                  f"{metrics['best_epoch']}, {metrics['fit_seconds']:.1f} s", flush=True)
            if position == 0:
                independent = check_recommendations(system, args.out, workdir, metrics)
                rows = baselines(system)
                config_used = system.config
            runs.append(metrics)
        rows["two_tower"] = summarise(runs)
        study = {}
        if not args.skip_loss_study:
            for name, change in LOSS_STUDY.items():
                variant = []
                for seed in args.seeds[:args.loss_study_seeds]:
                    _, metrics = train_two_tower(
                        args.config, {**overrides, **LOSS_STUDY_BASE, **change}, seed,
                        f"quality-{name}-{seed}")
                    variant.append(metrics)
                study[name] = summarise(variant)
                print(f"loss study {name}: nDCG@10 {study[name]['ndcg@10']['mean']:.4f}",
                      flush=True)
        cold = None if args.skip_cold_items else cold_items(args.config, overrides,
                                                            args.seeds[0])
    print_table(f"MovieLens-100K benchmark split, k = {K}; two-tower: mean ± std over seeds "
                f"{args.seeds}", rows)
    print("published nDCG@10 on this protocol: " + ", ".join(
        f"{name} {value}" for name, value in PUBLISHED_NDCG.items()))
    if study:
        print_table(f"Loss study ({args.loss_study_seeds} seed(s) each)", study)
    if cold:
        print(f"\nCold items: {cold['cold_items']} items unseen in training, "
              f"{cold['test_rows']} test rows, {cold['users']} users; ranked among cold items")
        for name in ("two_tower", "popularity_by_feature"):
            print(f"{name:<24}" + "".join(f"  {m} {v:.4f}" for m, v in cold[name].items()))
    seconds = time.perf_counter() - started
    print(f"\nrecommendations.csv scored independently: nDCG@10 {independent['ndcg@10']:.4f} "
          f"(agrees); whole benchmark {seconds / 60:.1f} min")
    results = {"protocol": "MovieLens-100K benchmark split (DESIGN.md §5), k = 10",
               "seeds": args.seeds, "overrides": {k: v for k, v in overrides.items()
                                                  if not k.startswith("paths.")},
               "config": {"model": dataclasses.asdict(config_used.model),
                          "training": dataclasses.asdict(config_used.training),
                          "sampling": {"num_negatives": config_used.data.num_negatives,
                                       "negative_sampling": config_used.data.negative_sampling}},
               "table": rows, "independent_scoring_of_recommendations_csv": independent,
               "loss_study": study, "cold_items": cold, "published_ndcg@10": PUBLISHED_NDCG,
               "seconds": seconds}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'recommendations.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
