"""MovieLens-100K quality benchmark: the two-tower model against the baselines, a loss study,
and cold items.

    .venv/bin/python benchmarks/quality.py                      # everything (~12 min here)
    .venv/bin/python benchmarks/quality.py --seeds 0 --skip-loss-study --skip-cold-items
    options: --config config.json  --set KEY VALUE  --out benchmarks/results/quality
             --ml100k-dir DIR  --loss-study-seeds N

Protocol: the benchmark split; recommendations among the items seen in
training, excluding each user's train + validation items; metrics at k = 10. The two-tower
model uses config.json as it is: its hyperparameters were chosen on the validation split
(benchmarks/README.md lists what was tried), and each seed (`training.seed`) early-stops on
validation. Baselines on the same split: most-popular and EASE (l2 tuned on validation, then
refitted on train + validation).

Loss study: one model (a single member, no refit), the same data and budget (config.json's
epochs and early stopping) with only the loss swapped: BCE with 16 uniform negatives, BCE with
16 popularity negatives and logQ, TFRS's in-batch softmax (with and without logQ), and the
softmax over the whole training catalogue.

Cold items: the cold-items split (the test items never appear in training), the model (one
member, no refit, as in the loss study) placing them from their features only, against
popularity-by-feature; ranked among the cold items.

The training jobs (seeds, loss-study rows, cold items) run in `--jobs` worker processes.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import _common  # noqa: E402  (first: the repository root on sys.path)
import numpy as np  # noqa: E402
import score_recommendations  # noqa: E402

from twotower_utils.evaluation.metrics import PopularityByFeature, top_k_from_scores  # noqa: E402
from twotower_utils.evaluation.ranking import ranking_metrics  # noqa: E402
from twotower_utils.reports.analysis import baseline_top_lists, metric_table  # noqa: E402

ROOT = _common.ROOT
K = 10
METRICS = ("ndcg", "precision", "recall", "map", "map_at_k", "hit_rate")
SHOWN = ("ndcg@10", "precision@10", "recall@10", "map@10")  # "map@10" is the benchmark's MAP
PUBLISHED_NDCG = {"most_popular": 0.252, "BPR": 0.445, "BiVAE": 0.469, "iALS (tuned)": 0.474,
                  "EASE (tuned)": 0.481}
# The loss study holds everything else fixed at one member and no refit (a single model's
# budget: config.json's epochs and early stopping), so only the loss differs.
LOSS_STUDY_BASE = {"model.ensemble_size": 1, "model.ensemble_member_overrides": [],
                   "training.refit_with_validation": False,
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

    system = TwoTowerRecallSystem(config, {**overrides, "training.seed": seed}, run_id=run_id)
    system.prepare_data(reuse=True)
    started = time.perf_counter()
    result = system.train_model(save=False)
    metrics = system.evaluate_model(k_values=[K], metrics=METRICS)
    # Validation nDCG@10 of the early-stopped model (an ensemble's: its members together), the
    # number settings are chosen by.
    val = result.extra.get(f"ensemble_val_{result.metric}", result.best_metric)
    metrics.update(fit_seconds=time.perf_counter() - started, best_epoch=result.best_epoch,
                   **{f"val_{result.metric}": val})
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


def baselines(data) -> dict:
    """Most-popular and EASE test metrics at K on the processed data."""
    started = time.perf_counter()
    lists, seconds, tuning = baseline_top_lists(data, K)
    table = metric_table(lists, data.interactions("test"), (K,), METRICS)
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
    system, metrics = train_two_tower(config, cold, seed, "quality-cold")
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
            "users": len(users), "two_tower": model, "popularity_by_feature": popularity,
            "fit_seconds": metrics["fit_seconds"]}


def run_job(job: dict, config: Path, out: Path, workdir: Path) -> dict:
    """One training job (in its own process): a seed of the configured model (the first also
    writes and checks recommendations.csv), a loss-study row, or the cold-items split."""
    if job["kind"] == "cold":
        return {"job": job, "cold": cold_items(config, job["overrides"], job["seed"])}
    run_id = f"quality-{job.get('name', 'seed')}-{job['seed']}"
    system, metrics = train_two_tower(config, job["overrides"], job["seed"], run_id)
    result = {"job": job, "metrics": metrics}
    if job.get("first"):
        result["independent"] = check_recommendations(system, out, workdir, metrics)
    return result


def run_jobs(jobs: list[dict], args, workdir: Path) -> list[dict]:
    """Run the jobs in `--jobs` worker processes (one TensorFlow thread each: the models are
    too small for one process to keep two cores busy); returns their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    def launch(index_job):
        index, job = index_job
        started = time.perf_counter()
        spec, result = workdir / f"job-{index}.json", workdir / f"job-{index}.result.json"
        spec.write_text(json.dumps(job))
        command = [sys.executable, __file__, "--job", str(spec), "--job-result", str(result),
                   "--config", str(args.config), "--out", str(args.out),
                   "--threads", "1" if args.jobs > 1 else "0"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        finished = subprocess.run(command, env=env, capture_output=True, text=True)
        if finished.returncode:
            raise SystemExit(f"job {job['kind']} {job.get('name', '')} seed {job['seed']} "
                             f"failed:\n{finished.stderr[-3000:]}")
        done = json.loads(result.read_text())
        if job["kind"] == "cold":
            shown = f"recall@10 among cold items {done['cold']['two_tower']['recall@10']:.4f}"
        else:
            val = next(f"{k[4:]} {v:.4f}" for k, v in done["metrics"].items()
                       if k.startswith("val_"))
            shown = f"test nDCG@10 {done['metrics']['ndcg@10']:.4f}, validation {val}"
        print(f"{job.get('name', 'two_tower' if job['kind'] == 'seed' else job['kind'])} "
              f"seed {job['seed']}: {shown} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        return done

    # Every job's configuration is checked here first: a bad one fails now, not after the
    # long jobs before it.
    from twotower_utils.config import load_config

    for job in jobs:
        load_config(args.config, job["overrides"])
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(launch, enumerate(jobs)))


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
    _common.add_set_option(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss-study-seeds", type=int, default=1,
                        help="how many of --seeds each loss-study variant trains with")
    parser.add_argument("--skip-loss-study", action="store_true")
    parser.add_argument("--skip-cold-items", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    _common.add_ml100k_option(parser)
    parser.add_argument("--jobs", type=int, default=2, help="training jobs run at once")
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--job-result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        if args.threads:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        result = run_job(json.loads(args.job.read_text()), args.config, args.out,
                         args.job.parent)
        args.job_result.write_text(json.dumps(result, default=float))
        return 0
    _common.use_ml100k_dir(args)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        overrides = {**_common.ML100K_OVERRIDES, "paths.raw_dir": str(ROOT / "data" / "raw"),
                     **{f"paths.{name}": str(workdir / name)
                        for name in ("processed_dir", "models_dir", "logs_dir")},
                     **_common.set_overrides(parser, args)}
        # The data stage once, here, so the jobs only read it; then the baselines.
        from twotower_utils.config import load_config
        from twotower_utils.data.preprocessing import DataPreprocessor, load_processed

        data = load_processed(DataPreprocessor(
            load_config(args.config, overrides)).run())
        rows = baselines(data)
        jobs = [{"kind": "seed", "seed": seed, "overrides": overrides, "first": i == 0}
                for i, seed in enumerate(args.seeds)]
        if not args.skip_loss_study:
            jobs += [{"kind": "loss", "name": name, "seed": seed,
                      "overrides": {**overrides, **LOSS_STUDY_BASE, **change}}
                     for name, change in LOSS_STUDY.items()
                     for seed in args.seeds[:args.loss_study_seeds]]
        if not args.skip_cold_items:
            jobs.append({"kind": "cold", "seed": args.seeds[0],
                         "overrides": {**overrides, **LOSS_STUDY_BASE}})
        done = run_jobs(jobs, args, workdir)
        seeds = [d for d in done if d["job"]["kind"] == "seed"]
        rows["two_tower"] = summarise([d["metrics"] for d in seeds])
        independent = next(d["independent"] for d in seeds if d["job"]["first"])
        config_used = load_config(args.config, overrides)
        study = {name: summarise([d["metrics"] for d in done
                                  if d["job"].get("name") == name])
                 for name in LOSS_STUDY if not args.skip_loss_study}
        cold = next((d["cold"] for d in done if d["job"]["kind"] == "cold"), None)
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
    results = {"protocol": "MovieLens-100K benchmark split, k = 10",
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
