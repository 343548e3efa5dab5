"""`DataPreprocessor`: load -> validate -> fit specs -> split -> negatives -> save, no TensorFlow.

    preprocessor = DataPreprocessor("config.json")
    preprocessor.load_data(); preprocessor.split_data()
    preprocessor.generate_negatives(); preprocessor.save_processed_data()
    data = load_processed(preprocessor.output_dir)

What is written, and how the other stages read it, is described in docs/architecture.md.
Run as a script (`python -m twotower_utils.data.preprocessing`) it is the data stage of the
pipeline.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.config import Config, ConfigError, load_config, parse_overrides
from twotower_utils.data.datasummary import report_features, summarise
from twotower_utils.data.features import fit_feature_specs, raw_feature_tables
from twotower_utils.data.fingerprint import FINGERPRINT_FILE, data_fingerprint
from twotower_utils.data.processed import EXPLICIT_NEGATIVES_FILE as EXPLICIT_FILE
from twotower_utils.data.processed import (
    ID_FEATURE,
    ProcessedData,
    explicit_counts,
    load_processed,
)
from twotower_utils.data.sampling import sample_negatives, sorted_unique
from twotower_utils.data.splits import split_mask
from twotower_utils.io import atomic_directory, write_json
from twotower_utils.logs import configure_logging, report

__all__ = ["DataPreprocessor", "ProcessedData", "load_processed", "main", "summarise"]


class DataPreprocessor:
    """Turns a dataset into the encoded, split arrays the model trains on.

    Takes a `Config`, or a path to config.json plus optional overrides. Each step stores its
    result on the object (`raw`, `train`, `validation`, `test`, `negatives`) and returns it.
    """

    def __init__(
        self,
        config: Config | str | Path = "config.json",
        overrides: dict[str, Any] | None = None,
    ):
        if isinstance(config, Config):
            self.config = config.with_overrides(overrides) if overrides else config
        else:
            self.config = load_config(config, overrides)
        self.raw = None
        self.train = self.validation = self.test = self.negatives = None
        self.timings: dict[str, float] = {}

    @property
    def output_dir(self) -> Path:
        """Where `save_processed_data` writes: `data/processed/<dataset>-<fingerprint>/`
        (`twotower_utils.data.fingerprint`: runs with the same data settings share it)."""
        return self.config.processed_dir()

    # ---------------------------------------------------------------- load
    def load_data(self):
        """Load and validate the configured dataset; returns the `RawDataset`.

        Labels come from `data.label` (the label column, every row, or a rating threshold).
        Explicit negatives (label 0) are kept aside in `self.explicit_negatives`; everything
        downstream works on the positives. Duplicate and conflicting (user, item) rows are
        resolved while loading (`data.duplicates`, `data.conflicting_labels`), so no pair can
        reach two splits. Ids become vocabularies with an out-of-vocabulary slot at index 0;
        feature specs (vocabularies, means and deviations) are fitted on the feature tables,
        and each feature is logged with its encoded size, each column not used (on every
        side) by name. What loading drops or changes is logged (`twotower_utils.data`) and
        kept in the notes of `stats()`.
        """
        from twotower_utils.data.datasets import load_dataset

        started = time.perf_counter()
        raw = load_dataset(self.config)
        labels = raw.interactions["label"].to_numpy()
        if not (labels == 1).any():
            raise ValueError(
                f"dataset {raw.name!r}: no interactions with label 1 to learn from"
            )
        # Each id string is hashed once: factorized here, then only the distinct ids
        # are looked up (at 10M interactions every pass over the strings costs seconds).
        user_codes, user_ids = pd.factorize(raw.interactions["user_id"])
        item_codes, item_ids = pd.factorize(raw.interactions["item_id"])
        user_ids, item_ids = pd.Series(user_ids), pd.Series(item_ids)
        self.user_vocab = _vocabulary(raw.users["user_id"], user_ids)
        self.item_vocab = _vocabulary(raw.items["item_id"], item_ids)
        self.user_features = raw.user_features if self.config.model.use_user_features else {}
        self.item_features = raw.item_features if self.config.model.use_item_features else {}
        self.feature_specs = {"user": fit_feature_specs(raw.users, self.user_features),
                              "item": fit_feature_specs(raw.items, self.item_features)}
        self.feature_sizes = report_features(raw, self.config.model, self.feature_specs)
        self._user_index = _index_lookup(self.user_vocab)
        self._item_index = _index_lookup(self.item_vocab)
        indexed = raw.interactions.assign(
            user_idx=self._user_index(user_ids)[user_codes],
            item_idx=self._item_index(item_ids)[item_codes],
        )
        self.positives = indexed[labels == 1].reset_index(drop=True)
        self.explicit_negatives = indexed[labels == 0].reset_index(drop=True)
        self.raw = raw
        report(None, f"dataset {raw.name}: {len(self.user_vocab):,} users, "
                     f"{len(self.item_vocab):,} items, {len(self.positives):,} positive and "
                     f"{len(self.explicit_negatives):,} explicit negative interactions",
               logging.INFO)
        self.timings["load"] = time.perf_counter() - started
        return raw

    # ---------------------------------------------------------------- split
    def split_data(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Split the positives into (train, validation, test) with `data.split`.

        The test split follows the configured method; validation is carved out of the training
        part only, by the same method with `validation_ratio`, so test rows never inform it.
        Returns the three frames (also stored on the object) and logs their sizes.
        """
        if self.raw is None:
            self.load_data()
        started = time.perf_counter()
        split = self.config.data.split
        train_mask = split_mask(self.positives, split.method, split.train_ratio, split.seed)
        train_part = self.positives[train_mask].reset_index(drop=True)
        test = self.positives[~train_mask].reset_index(drop=True)
        keep_mask = split_mask(train_part, split.method, 1.0 - split.validation_ratio, split.seed)
        self.train = train_part[keep_mask].reset_index(drop=True)
        self.validation = train_part[~keep_mask].reset_index(drop=True)
        self.test = test
        self.split_explicit_negatives()
        report(None, f"split {split.method!r}: train {len(self.train):,}, validation "
                     f"{len(self.validation):,}, test {len(self.test):,}", logging.INFO)
        self.timings["split"] = time.perf_counter() - started
        return self.train, self.validation, self.test

    def split_explicit_negatives(self) -> pd.DataFrame:
        """The explicit negatives (label-0 rows) with a `split` column; returns them.

        A row whose (user, item) is a positive of that user in any split is dropped (it
        would teach the model against its own positives). The rest are split per user at
        random with the positives' ratios (`train_ratio`, then `validation_ratio` of the
        training part), seeded by `data.split.seed`, or per user by time for the
        `temporal` method: the test share is what evaluation's explicit-negative AUC uses.
        """
        split, frame = self.config.data.split, self.explicit_negatives
        width = len(self.item_vocab) + 1
        keys = frame["user_idx"].to_numpy(np.int64) * width + frame["item_idx"]
        known = (self.positives["user_idx"].to_numpy(np.int64) * width
                 + self.positives["item_idx"])
        frame = frame[~np.isin(keys, known)].reset_index(drop=True)
        method = "temporal" if split.method == "temporal" else "random"
        train = split_mask(frame, method, split.train_ratio, split.seed)
        labels = np.where(train, "train", "test").astype(object)
        keep = split_mask(frame[train], method, 1.0 - split.validation_ratio, split.seed)
        labels[np.flatnonzero(train)[~keep]] = "validation"
        self.explicit_split = frame.assign(split=labels)
        self.explicit_dropped = int(len(self.explicit_negatives) - len(frame))
        return self.explicit_split

    # ---------------------------------------------------------------- negatives
    def generate_negatives(self) -> pd.DataFrame:
        """Sample the negatives saved for inspection (`negatives.parquet`); returns them.

        A bounded, seeded sample of what the data stage would draw with `data.num_negatives`
        (at least 1) negatives per training positive: at most `data.negatives_sample_size`
        rows, drawn for training positives picked uniformly (all of them, in order, when the
        full set is smaller). Never one of the user's training positives; uniform over items
        seen in training, or proportional to training popularity ** `popularity_alpha`; seeded
        by `data.split.seed` (a data setting: the file belongs to the processed data, which
        every training seed shares). Training itself resamples fresh negatives every step,
        so this file only serves checks and pointwise evaluation (positive vs negative
        scores).
        """
        if self.train is None:
            self.split_data()
        started = time.perf_counter()
        data = self.config.data
        users = self.train["user_idx"].to_numpy()
        items = self.train["item_idx"].to_numpy()
        num_items = len(self.item_vocab) + 1
        per_positive = max(int(data.num_negatives), 1)
        population = len(users) * per_positive
        size = min(int(data.negatives_sample_size), population)
        if size == population:
            rows = np.repeat(np.arange(len(users)), per_positive)
        else:
            # Which of the population's draws to make: a sample without replacement, sorted
            # so the file follows the training order like the full set would.
            rng = np.random.default_rng([self.config.data.split.seed, 1])
            rows = np.sort(rng.choice(population, size=size, replace=False)) // per_positive
        neg_users, neg_items = sample_negatives(
            users=users[rows],
            positive_users=users,
            positive_items=items,
            num_items=num_items,
            distribution=data.negative_sampling,
            alpha=data.popularity_alpha,
            seed=data.split.seed,
        )
        self.negatives = pd.DataFrame(
            {
                "user_id": np.asarray(self.user_vocab, dtype=object)[neg_users - 1],
                "item_id": np.asarray(self.item_vocab, dtype=object)[neg_items - 1],
                "user_idx": neg_users.astype(np.int32),
                "item_idx": neg_items.astype(np.int32),
            }
        )
        self.negatives_population = population
        self.negatives_note = None
        if size < population:
            self.negatives_note = report(
                None, f"negatives.parquet holds a seeded sample of {size:,} of the "
                      f"{population:,} negatives ({per_positive} per training positive; "
                      f"data.negatives_sample_size = {data.negatives_sample_size:,}); "
                      "training draws its own", logging.INFO)
        self.timings["negatives"] = time.perf_counter() - started
        return self.negatives

    # ---------------------------------------------------------------- save
    def save_processed_data(self, directory: str | Path | None = None) -> Path:
        """Write splits, negatives, vocabularies, feature tables/specs, history and stats.

        Everything goes to a temporary directory first and replaces `directory` (default
        `output_dir`) in one rename, so a failure midway leaves the previous
        processed data intact. Returns the directory.
        """
        if self.negatives is None:
            self.generate_negatives()
        started = time.perf_counter()
        target = Path(directory) if directory is not None else self.output_dir
        with atomic_directory(target) as staging:
            for name in ("train", "validation", "test", "negatives"):
                getattr(self, name).to_parquet(staging / f"{name}.parquet", index=False)
            self.explicit_split.to_parquet(staging / EXPLICIT_FILE, index=False)
            write_json(staging / "vocabularies.json",
                       {"user_id": self.user_vocab, "item_id": self.item_vocab})
            write_json(staging / "feature_specs.json", self.feature_specs)
            np.savez(staging / "features.npz", **self._feature_tables())
            history = self._history_matrix()
            np.savez(staging / "history.npz", indptr=history.indptr, indices=history.indices,
                     shape=np.asarray(history.shape))
            self.timings["save"] = time.perf_counter() - started
            write_json(staging / "stats.json", self.stats())
            # Written last: later stages compare it with their own settings before reading.
            write_json(staging / FINGERPRINT_FILE, data_fingerprint(self.config).to_dict())
        return target

    def run(self) -> Path:
        """All four steps in order; returns the processed-data directory."""
        self.load_data()
        self.split_data()
        self.generate_negatives()
        return self.save_processed_data()

    # ---------------------------------------------------------------- helpers
    def _feature_tables(self) -> dict[str, np.ndarray]:
        tables = {}
        sides = (("user", self.raw.users, "user_id", self.user_vocab),
                 ("item", self.raw.items, "item_id", self.item_vocab))
        for side, table, id_column, vocab in sides:
            # Row p + 1 holds the raw features of vocab[p] (the towers' encoding layers
            # encode them); ids without a feature row are missing everywhere, like row 0, the
            # out-of-vocabulary slot.
            rows = table.drop_duplicates(id_column).set_index(id_column).reindex(vocab)
            for name, values in raw_feature_tables(rows, self.feature_specs[side]).items():
                missing = np.full(1, np.nan if values.dtype.kind == "f" else "", values.dtype)
                tables[f"{side}/{name}"] = np.concatenate([missing, values])
            # Ids never seen in training share the OOV id embedding (an untrained row would
            # be noise); their features still place them: that is the cold-start path.
            seen = np.zeros(len(vocab) + 1, dtype=bool)
            seen[self.train[f"{side}_idx"].to_numpy()] = True
            id_rows = np.where(seen, np.arange(len(vocab) + 1), 0).astype(np.int32)
            tables[f"{side}/{ID_FEATURE}"] = id_rows
        return tables

    def _history_matrix(self) -> sp.csr_matrix:
        shape = (len(self.user_vocab) + 1, len(self.item_vocab) + 1)
        matrix = sp.csr_matrix(
            (np.ones(len(self.train), dtype=np.float32),
             (self.train["user_idx"].to_numpy(), self.train["item_idx"].to_numpy())),
            shape=shape,
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def stats(self) -> dict[str, Any]:
        """Counts, sparsity, split sizes, input hygiene and notes of the current state.

        Returns a JSON-able dict (what `stats.json` holds): `labels` says how the labels were
        made (`data.label`, with the positive and explicit-negative rows it produced),
        `input_hygiene` counts the duplicate and conflicting (user, item) rows collapsed before
        the split, `features` lists each feature the towers get with its encoded size,
        `unused_columns` names per file the columns not used, and `notes` lists everything
        loading dropped or changed, in words.
        """
        num_users, num_items = len(self.user_vocab), len(self.item_vocab)
        # Indices, not id strings: at 10M interactions string sets cost seconds per call.
        pair_keys = (self.positives["user_idx"].to_numpy(np.int64) * (num_items + 1)
                     + self.positives["item_idx"].to_numpy(np.int64))
        num_pairs = len(sorted_unique(pair_keys))
        splits = {name: getattr(self, name) for name in ("train", "validation", "test")}
        seen = {"user": np.zeros(num_users + 1, dtype=bool),
                "item": np.zeros(num_items + 1, dtype=bool)}
        if self.train is not None:
            for side, mask in seen.items():
                mask[self.train[f"{side}_idx"].to_numpy()] = True
        hygiene = {"conflicting_pairs": 0, "conflicting_rows_removed": 0, "duplicate_pairs": 0,
                   "duplicate_rows_removed": 0, **getattr(self.raw, "hygiene", {})}
        note = getattr(self, "negatives_note", None)
        return {
            "dataset": self.raw.name,
            "split_method": self.config.data.split.method,
            "num_users": num_users,
            "num_items": num_items,
            "num_interactions": int(len(self.positives)),
            "num_explicit_negatives": int(len(self.explicit_negatives)),
            "explicit_negatives": explicit_counts(getattr(self, "explicit_split", None),
                                                  getattr(self, "explicit_dropped", 0)),
            "sparsity": 1.0 - num_pairs / float(num_users * num_items),
            "labels": dict(getattr(self.raw, "labels", {})),
            "input_hygiene": hygiene,
            "splits": {
                name: {
                    "rows": int(len(frame)),
                    "users": int(frame["user_idx"].nunique()),
                    "items": int(frame["item_idx"].nunique()),
                    "cold_users": int((~seen["user"][frame["user_idx"].to_numpy()]).sum()),
                    "cold_items": int((~seen["item"][frame["item_idx"].to_numpy()]).sum()),
                }
                for name, frame in splits.items()
                if frame is not None
            },
            "num_negatives": int(len(self.negatives)) if self.negatives is not None else 0,
            "negatives_sampled_from": int(getattr(self, "negatives_population", 0)),
            "user_features": dict(self.user_features),
            "item_features": dict(self.item_features),
            "features": getattr(self, "feature_sizes", {}),
            "unused_columns": dict(getattr(self.raw, "unused_columns", {})),
            "notes": list(self.raw.notes) + ([note] if note else []),
            "timings_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _vocabulary(*id_columns: pd.Series) -> list[str]:
    """Sorted distinct ids (numerically when every id is a number, so "10" follows "9")."""
    ids = pd.unique(pd.concat([column.astype(str) for column in id_columns], ignore_index=True))
    ids = [str(value) for value in ids]
    if all(value.isdigit() for value in ids):
        return sorted(ids, key=lambda value: (int(value), value))
    return sorted(ids)


def _index_lookup(vocab: list[str]) -> Callable[[pd.Series], np.ndarray]:
    """A function mapping an id Series to 1-based vocabulary indices (0 = unknown id)."""
    index = pd.Index(vocab)

    def lookup(ids: pd.Series) -> np.ndarray:
        # Look up each distinct id once: hashing 10M strings into the index took 7 s,
        # factorizing them and indexing the few distinct ones takes about one.
        codes, uniques = pd.factorize(ids.astype(str))
        positions = index.get_indexer(uniques)[codes] if len(codes) else codes
        positions = np.where(codes < 0, -1, positions)
        return (positions + 1).astype(np.int32)  # -1 (unknown) becomes 0, the OOV slot

    return lookup


def main(argv: list[str] | None = None) -> int:
    """Data stage CLI: fetch/load the configured dataset, preprocess, save, print a summary."""
    parser = argparse.ArgumentParser(
        prog="python -m twotower_utils.data.preprocessing",
        description="Fetch, validate, split and save a dataset for two-tower training.",
    )
    parser.add_argument("--config", default="config.json", help="configuration file")
    parser.add_argument("--dataset", help="override data.dataset")
    parser.add_argument(
        "-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="override a config key (dotted path); VALUE read as JSON, else YAML, else text",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.param)
    except ConfigError as error:
        parser.error(str(error))
    if args.dataset:
        overrides["data.dataset"] = args.dataset
    configure_logging()
    started = time.perf_counter()
    preprocessor = DataPreprocessor(args.config, overrides)
    directory = preprocessor.run()
    print(summarise(preprocessor.stats(), directory))
    print(f"data stage finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
