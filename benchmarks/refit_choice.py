"""Choose how to refit on train + validation without looking at test: a nested holdout.

    .venv/bin/python benchmarks/refit_choice.py [--set KEY VALUE ...] [--variants JSON]
        [--holdout-seed N] [--out refit_choice.jsonl] [--ml100k-dir DIR]

A refit trains on the validation split, so validation cannot judge it, and test must not.
This script moves the protocol one level in: a random share of the training split (the
share validation has of train + validation) is held out as an inner validation split; the
model is early-stopped on it, refitted on the whole training split by each variant, and
every result is scored on the real validation split, which here plays the part of test.
Variants: "none" (the early-stopped model as it is), "scratch" (a fresh model for the
early-stopped epoch counts, each ensemble member for its own) and continued training of
the early-stopped model, `{"epochs": E, "learning_rate": LR}` each (default: 1 and 2 epochs
at 0.005). One JSON line per variant: validation nDCG@10, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import _common  # noqa: E402  (first: the repository root on sys.path)

ROOT = _common.ROOT
DEFAULT_VARIANTS = [{"epochs": 1, "learning_rate": 0.005}, {"epochs": 2, "learning_rate": 0.005}]


def nested_data(data, seed: int = 123):
    """`data` with a random share of its training split moved into validation and its
    validation split in the place of test (the share: validation's of train + validation).

    Takes a `ProcessedData`; returns a new one whose `history` is the smaller training split.
    """
    import numpy as np
    import scipy.sparse as sp

    train = data.train.reset_index(drop=True)
    share = len(data.validation) / (len(data.validation) + len(train))
    inner = np.random.default_rng(seed).random(len(train)) < share
    kept = train[~inner].reset_index(drop=True)
    history = sp.csr_matrix((np.ones(len(kept), np.float32),
                             (kept["user_idx"].to_numpy(), kept["item_idx"].to_numpy())),
                            shape=data.history.shape)
    history.sum_duplicates()
    history.data[:] = 1.0
    return replace(data, train=kept, validation=train[inner].reset_index(drop=True),
                   test=data.validation, history=history)


def main(argv: list[str] | None = None) -> int:
    """Early-stop once on the inner split, score every refit variant; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.json")
    parser.add_argument("--variants", type=json.loads, default=DEFAULT_VARIANTS,
                        help="JSON list of {\"epochs\": E, \"learning_rate\": LR}")
    parser.add_argument("--holdout-seed", type=int, default=123,
                        help="seed of the inner holdout's draw")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "refit_choice.jsonl")
    _common.add_set_option(parser)
    _common.add_ml100k_option(parser)
    args = parser.parse_args(argv)
    _common.use_ml100k_dir(args)
    overrides = {**_common.ML100K_OVERRIDES, **_common.set_overrides(parser, args)}

    from twotower_utils.model.fitting import refit
    from twotower_utils.system import TwoTowerRecallSystem

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = {f"paths.{name}": str(Path(scratch) / name)
                 for name in ("processed_dir", "models_dir", "logs_dir")}
        system = TwoTowerRecallSystem(
            args.config, {**overrides, **paths, "training.refit_with_validation": False},
            run_id="refit-choice")
        system.use_data(nested_data(system.prepare_data(), args.holdout_seed))
        system.build_model()
        started = time.perf_counter()
        result = system.train_model(save=False)
        early = system.model

        def score(model) -> float:
            system.model, system.refitted = model, True
            system._user_vectors = system._item_vectors = None
            return system.evaluate_model(k_values=[10], metrics=("ndcg",))["ndcg@10"]

        rows = [{"variant": "none", "seconds": time.perf_counter() - started,
                 "member_best_epochs": result.extra.get("member_best_epochs")}]
        rows[0]["val_ndcg@10"] = score(early)
        config = system.config
        started = time.perf_counter()
        fresh, _ = refit(system, config, result.best_epoch, "scratch", False,
                         result.extra.get("member_best_epochs"))
        rows.append({"variant": "scratch", "seconds": time.perf_counter() - started,
                     "val_ndcg@10": score(fresh)})
        for index, variant in enumerate(args.variants):
            changed = replace(config, training=replace(
                config.training, refit_learning_rate=float(variant["learning_rate"])))
            started = time.perf_counter()
            continued, _ = refit(system, changed, int(variant["epochs"]), f"continue-{index}",
                                 False, start=early)
            rows.append({"variant": variant, "seconds": time.perf_counter() - started,
                         "val_ndcg@10": score(continued)})
    with args.out.open("a") as out:
        for row in rows:
            row = {"overrides": overrides, "holdout_seed": args.holdout_seed, **row,
                   "seconds": round(row["seconds"], 1)}
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
