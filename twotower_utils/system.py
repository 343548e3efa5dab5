"""`TwoTowerRecallSystem`: the one-object API from data to recommendations.

    system = TwoTowerRecallSystem("config.json")
    system.prepare_data(); system.build_model(); system.train_model(); system.evaluate_model()
    system.recommend_items("196", top_k=10)        # DataFrame: item_id, score, rank
    TwoTowerRecallSystem.load("models/<run_id>")   # a saved run, without retraining

A known user's recommendations are a lookup of their cached embedding (computed once from
their training + validation history) and one matrix-vector product with the cached item
embeddings. An unknown user goes through the cold-start path when features (and optionally
items they interacted with) are given, through the user tower with the out-of-vocabulary id.
The run directory layout is in `save`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_utils.config import Config, config_from_dict, load_config
from twotower_utils.data.fingerprint import data_fingerprint
from twotower_utils.data.processed import ProcessedData, is_processed_for
from twotower_utils.evaluation.protocol import evaluation_protocol
from twotower_utils.pipeline.runs import check_run_id
from twotower_utils.serving.artifacts import RunArtifacts, is_saved_run

__all__ = ["TwoTowerRecallSystem"]

logger = logging.getLogger(__name__)


def _check_feature_names(side: str, given: dict[str, Any], specs: list[dict]) -> None:
    """ValueError naming the cold-start features this run's `side` tower does not know."""
    known = [spec["name"] for spec in specs]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"{side}_features: unknown feature(s) {unknown}; this run's {side} tower uses "
            + (", ".join(repr(name) for name in known) if known else "no features")
            + f" (as declared in data.{side}_features)")


class TwoTowerRecallSystem:
    """Data preparation, two-tower training, evaluation and recommendation in one object.

    Args:
        config_path: the configuration file (config.json).
        overrides: dict of overrides merged over it (nested or dotted keys).
        run_id: names the run (`models/<run_id>/`, checkpoints, TensorBoard logs): letters,
            digits, '.', '_' and '-' (no path separators, not '.' or '..'); default
            `<dataset>-<timestamp>`. Pass the same run_id with `train_model(resume=True)` to
            continue a killed run.
        strategy: the `tf.distribute.Strategy` to train under (None: `make_strategy` of
            `training.distribution_strategy`, see `model.distributed`).

    `data` is the prepared `ProcessedData`, or for a loaded run (`load`) its `RunArtifacts`
    (`artifacts`), which holds what serving and rebuilding the model need, not the splits.
    """

    def __init__(self, config_path: str | Path = "config.json",
                 overrides: dict[str, Any] | None = None, run_id: str | None = None,
                 strategy=None, *, _config: Config | None = None):
        # `_config` is `load`'s way in: a saved run's resolved configuration, not a file.
        self.config: Config = _config or load_config(config_path, overrides)
        self._strategy = strategy
        self.run_id = check_run_id(run_id, "run_id") if run_id is not None else (
            f"{self.config.data.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        self.data = None
        self.model = None
        self.training_result = None
        self.tuning = None  # the tuning step's trials (`training.tune`), when it ran
        self.refitted = False
        self.metrics: dict[str, float] = {}
        self.run_dir: Path | None = None
        self._user_vectors = self._item_vectors = None
        self._index: dict[str, dict[str, int]] = {}
        self._untrained = False  # a model from build_model() that train_model() has not seen
        # The run on disk: the one this system was loaded from, or last saved to.
        self.artifacts: RunArtifacts | None = None

    @property
    def has_training_data(self) -> bool:
        """True when `data` is prepared `ProcessedData` (splits to train and evaluate on),
        False before `prepare_data` or for a loaded run (its `RunArtifacts` only)."""
        return isinstance(self.data, ProcessedData)

    # ------------------------------------------------------------------ pipeline
    def prepare_data(self, reuse: bool = False):
        """Run the data stage (`DataPreprocessor`) and load its output.

        The processed data lives in `data/processed/<dataset>-<fingerprint>/`, keyed by every
        setting that shapes it. With `reuse=True` it is loaded when that directory holds a
        complete data stage for exactly these settings (else the data stage runs). Returns
        the `ProcessedData`.
        """
        from twotower_utils.data.preprocessing import DataPreprocessor, load_processed

        digest = data_fingerprint(self.config).digest
        directory = self.config.processed_dir(digest)
        if not (reuse and is_processed_for(directory, digest)):
            DataPreprocessor(self.config).run()
        return self.use_data(load_processed(directory))

    def use_data(self, data: ProcessedData) -> ProcessedData:
        """Train, evaluate and serve on `data` (what `prepare_data` loads, or splits made
        elsewhere, e.g. a benchmark's nested holdout); returns it."""
        self.data = data
        # Serving sees everything known before the test split: the test protocol's training
        # part (train + validation) is excluded and its items are the candidates.
        self._test_protocol = evaluation_protocol(data, "test")
        self._serving_history = self._test_protocol.exclude
        self._candidates = self._test_protocol.candidates
        self._user_vectors = self._item_vectors = None
        self._index = {}
        return data

    @property
    def strategy(self):
        """The `tf.distribute.Strategy` training runs under (made once, from the config)."""
        from twotower_utils.model.distributed import make_strategy

        if self._strategy is None:
            self._strategy = make_strategy(self.config.training.distribution_strategy)
        return self._strategy

    def build_model(self):
        """Build the two towers and the retrieval model for the prepared data (in `strategy`)."""
        from twotower_utils.model.two_tower import build_model

        if self.data is None:
            self.prepare_data()
        with self.strategy.scope():
            self.model = build_model(self.data, self.config)
        self._untrained = True
        self._user_vectors = self._item_vectors = None
        return self.model

    def train_model(self, resume: bool = False, save: bool = True, callbacks=()):
        """Train with early stopping and per-epoch checkpoints; returns a `TrainingResult`.

        `resume=True` continues this run_id's last checkpoint (a fresh start if none; a
        checkpoint made with other settings is refused, naming the keys that differ).
        With `save=True` the run directory `models/<run_id>/` is written afterwards.
        With `training.refit_with_validation`, a fresh model is then trained on train +
        validation for the best epoch count and replaces the early-stopped one.

        With `model.ensemble_size` K > 1 the K members train side by side in one model, every
        step training each on its own batch (own order, negatives, dropout, loss overrides);
        each member is early-stopped on its own validation metric and keeps its best epoch,
        and one refit takes each member at its own epoch count (`fitting.train_and_refit`).
        The result's `extra` then holds each member's own validation metric and the
        ensemble's (`ensemble_val_<metric>`).

        Under `strategy` every worker calls this (validation is collective) and the chief
        alone saves; the system then holds an undistributed copy (`fitting.plain_copy`).
        """
        from twotower_utils.model.fitting import ensemble_summary, train_and_refit

        if self.model is None:
            self.build_model()
        early = None
        if self.config.training.tune.enabled:
            from twotower_utils.model.tuning import tune

            # The winner's configuration becomes the run's; its early-stopped model and
            # result go on to the refit.
            self.tuning, self.config, early, self.model = tune(self, self.run_id, callbacks)
        self.training_result, early_stopped, self.model = train_and_refit(
            self, self.model, self.config, self.run_id, resume, callbacks, result=early)
        if self.tuning is not None:
            self.training_result.extra["tuning"] = self.tuning.to_dict()
        if self.config.model.ensemble_size > 1:
            self.training_result.extra.update(
                ensemble_summary(self, self.training_result, early_stopped))
        self.refitted = self.config.training.refit_with_validation
        self._user_vectors = self._item_vectors = None
        if save and self.strategy.extended.should_checkpoint:
            self.save()
        return self.training_result

    def evaluate_model(self, split: str = "test", k_values=None, metrics=None,
                       candidates: np.ndarray | None = None) -> dict:
        """Ranking metrics on `split` ("test" or "validation") over the full catalogue.

        The protocol is `evaluation.protocol.evaluation_protocol(data, split)`: for test,
        users' history and excluded items are train + validation, candidates the items seen
        there; for validation, the training split alone. Returns `{"ndcg@10": ...}` (k values
        and metrics default to the `evaluation` section of the config). `candidates` (bool
        `[num_items]`) replaces the recommendable items, e.g. with the unseen test items of a
        cold-items split; test metrics are then not stored.
        """
        from twotower_utils.evaluation.metrics import ranking_metrics, top_k_scores

        if split not in ("test", "validation"):
            raise ValueError(f"split = {split!r}: expected 'test' or 'validation'")
        if split == "validation" and self.refitted:
            raise ValueError("split = 'validation': the model was refitted on train + "
                             "validation (training.refit_with_validation), so validation "
                             "metrics would be scored on its own training data")
        if not self.has_training_data:
            raise RuntimeError("no evaluation data: a loaded run keeps only what serving "
                               "needs (its metrics are in metrics.json); call prepare_data() "
                               "first to evaluate it again")
        self._require_trained()
        evaluation = self.config.evaluation
        k_values = tuple(k_values or evaluation.k_values)
        metrics = tuple(metrics or evaluation.metrics)
        data = self.data
        given = candidates
        if given is not None:
            given = np.asarray(given, dtype=bool)
            if given.shape != (data.num_items,):
                raise ValueError(f"candidates: expected a bool mask of shape "
                                 f"({data.num_items},), got {given.shape}")
        if split == "test":
            protocol, user_vectors = self._test_protocol, self._users()
        else:
            protocol = evaluation_protocol(data, "validation")
            user_vectors = self.model.user_embeddings(np.arange(data.num_users),
                                                      protocol.exclude)
        candidates = protocol.candidates if given is None else given
        users = protocol.users
        exclude = protocol.exclude[users] if evaluation.exclude_train_items else None
        top_idx, _ = top_k_scores(user_vectors[users], self._items(), max(k_values),
                                  exclude=exclude, candidates=candidates)
        result = ranking_metrics(top_idx, protocol.relevant[users], k_values, metrics,
                                 num_items=int(candidates.sum()))
        if split == "test" and given is None:
            self.metrics = result
            if self.run_dir is not None and is_saved_run(self.run_dir):
                RunArtifacts.record_metrics(self.run_dir, result)
                if self.artifacts is not None:
                    self.artifacts.metrics = result
        return result

    # ------------------------------------------------------------------ serving
    def recommend_items(self, user_id, top_k: int = 10, exclude_seen: bool = True,
                        user_features: dict[str, Any] | None = None,
                        history_items: list | None = None) -> pd.DataFrame:
        """Top `top_k` items for one user, best first: DataFrame `item_id, score, rank`.

        A known user: their cached embedding, excluding their train + validation items
        unless `exclude_seen=False` (`user_features`/`history_items` are then ignored). An
        unknown user needs `user_features` (raw values, as in users.csv) and/or
        `history_items` (item ids they interacted with, also excluded) for the cold-start
        path; otherwise a KeyError says so. `top_k` must be an integer >= 1.
        """
        if not isinstance(top_k, int | np.integer) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k = {top_k!r}: expected an integer >= 1")
        vector, seen = self._user_vector(user_id, user_features, history_items)
        scores = self._items() @ vector
        allowed = self._candidates.copy()
        if exclude_seen and len(seen):
            allowed[seen] = False
        scores = np.where(allowed, scores, -np.inf)
        k = min(top_k, int(allowed.sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.lexsort((top, -scores[top]))]
        vocab = self._vocab("item")
        return pd.DataFrame({"item_id": [vocab[i - 1] for i in top],
                             "score": scores[top].astype(np.float32),
                             "rank": np.arange(1, k + 1)})

    def recommend_batch(self, user_ids=None, top_k: int = 10,
                        exclude_seen: bool = True) -> pd.DataFrame:
        """Top `top_k` for many known users (default: all): `user_id, item_id, rank, score`."""
        from twotower_utils.evaluation.metrics import top_k_scores

        if not isinstance(top_k, int | np.integer) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k = {top_k!r}: expected an integer >= 1")
        users = (np.arange(1, len(self._vocab("user")) + 1) if user_ids is None
                 else np.array([self._known_index("user", u) for u in user_ids], np.int64))
        exclude = self._serving_history[users] if exclude_seen else None
        top_idx, top_scores = top_k_scores(self._users()[users], self._items(), top_k,
                                           exclude=exclude, candidates=self._candidates)
        user_vocab, item_vocab = np.asarray(self._vocab("user")), np.asarray(self._vocab("item"))
        rows, ranks = np.nonzero(top_idx >= 0)
        return pd.DataFrame({"user_id": user_vocab[users[rows] - 1],
                             "item_id": item_vocab[top_idx[rows, ranks] - 1],
                             "rank": ranks + 1, "score": top_scores[rows, ranks]})

    def get_user_embedding(self, user_id, user_features: dict[str, Any] | None = None,
                           history_items: list | None = None) -> np.ndarray:
        """The user's embedding (float32 `[d]`); unknown users as in `recommend_items`."""
        return self._user_vector(user_id, user_features, history_items)[0].copy()

    def get_item_embedding(self, item_id, item_features: dict[str, Any] | None = None
                           ) -> np.ndarray:
        """The item's embedding (float32 `[d]`). An id outside the vocabulary needs
        `item_features` (raw values, as in items.csv) for the cold-start path, else KeyError."""
        index = self._index.setdefault("item", {v: i for i, v in
                                                enumerate(self._vocab("item"), start=1)})
        if str(item_id) in index:
            return self._items()[index[str(item_id)]].copy()
        if item_features is None:
            raise KeyError(f"unknown item_id {item_id!r}: not in the vocabulary of this run; "
                           "pass item_features={...} (raw values, as in items.csv) to embed a "
                           "new item")
        self._require_trained()
        _check_feature_names("item", item_features, self.data.feature_specs.get("item", []))
        return self.model.embed_new("item", item_features)

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write the run directory (default `models/<run_id>/`) atomically; returns it.

        Contents: `config.json` (resolved), `vocabularies.json`, `feature_specs.json`,
        `features.npz`, `history.npz` (train + validation positives, csr), `candidates.npy`,
        `user_embeddings.npy` / `item_embeddings.npy` (row = index, ids in the vocabularies),
        `weights/` (TF checkpoint of the model), `user_tower/` and `item_tower/`
        (SavedModels, signature `serving_default`), `training_history.json`,
        `training.json` and `metrics.json` when known, `fingerprint.json` (the data it was
        trained on) and `manifest.json` (written last: it marks a complete run). The target
        must be new, empty or a saved run (else FileExistsError: nothing is deleted).
        `serving.artifacts.RunArtifacts.save` writes it all but the TensorFlow parts
        (weights and towers), which this adds into its staging directory.
        """
        from twotower_utils.serving.export import export_tower

        self._require_trained()
        data, result, loaded = self.data, self.training_result, self.artifacts

        def write_model(staging: Path) -> None:  # the TensorFlow parts RunArtifacts leaves out
            self.model.save_weights(str(staging / "weights" / "model"))
            export_tower(self.model, "user", staging / "user_tower")
            export_tower(self.model, "item", staging / "item_tower")

        summary = {k: v for k, v in result.to_dict().items() if k != "history"} if result else None
        artifacts = RunArtifacts(
            config=self.config.to_dict(), user_vocab=list(data.user_vocab),
            item_vocab=list(data.item_vocab), features=data.features,
            feature_specs=data.feature_specs, history=self._serving_history,
            candidates=self._candidates, user_embeddings=self._users(),
            item_embeddings=self._items(), metrics=self.metrics,
            # A re-saved loaded run keeps the training record it was loaded with.
            training_history=result.history if result else loaded and loaded.training_history,
            training_summary=summary or (loaded and loaded.training_summary),
            fingerprint=data.fingerprint)
        target = artifacts.save(Path(run_dir) if run_dir else
                                self.config.path("models_dir") / self.run_id,
                                self.run_id, write_model)
        self.run_dir, self.artifacts = target, artifacts
        logger.info(f"saved run to {target}")
        return target

    @classmethod
    def load(cls, run_dir: str | Path) -> TwoTowerRecallSystem:
        """A saved run, ready to recommend without retraining (the model is rebuilt from the
        saved weights only when the cold-start path needs it).

        Takes the run directory (RunDirectoryError names a missing or damaged file); returns
        a system whose `artifacts` (and `data`) is the run's `RunArtifacts`.
        """
        artifacts = RunArtifacts.load(run_dir)
        system = cls(_config=config_from_dict(artifacts.config, root=Path.cwd()))
        # The folder's name, whatever it is (a run id is only checked when one is made).
        system.run_id, system.run_dir = artifacts.directory.name, artifacts.directory
        system.artifacts = system.data = artifacts
        system._serving_history, system._candidates = artifacts.history, artifacts.candidates
        system._user_vectors = artifacts.user_embeddings
        system._item_vectors = artifacts.item_embeddings
        system.refitted = system.config.training.refit_with_validation
        system.metrics = dict(artifacts.metrics)
        return system

    # ------------------------------------------------------------------ helpers
    def _require_trained(self) -> None:
        self._require_model()
        if self._untrained and self.training_result is None:
            raise RuntimeError("the model is untrained: call train_model() first (or load a "
                               "saved run with TwoTowerRecallSystem.load(run_dir))")

    def _require_model(self) -> None:
        if self.model is None and self.run_dir is not None and (self.run_dir / "weights").is_dir():
            from twotower_utils.model.two_tower import build_model

            self.model = build_model(self.data, self.config)
            self.model.load_weights(str(self.run_dir / "weights" / "model")).expect_partial()
        if self.model is None:
            raise RuntimeError("no model yet: call build_model() and train_model() first, or "
                               "TwoTowerRecallSystem.load(run_dir)")

    def _vocab(self, side: str) -> list[str]:
        return self.data.user_vocab if side == "user" else self.data.item_vocab

    def _known_index(self, side: str, key) -> int:
        if side not in self._index:
            self._index[side] = {v: i for i, v in enumerate(self._vocab(side), start=1)}
        index = self._index[side].get(str(key))
        if index is None:
            raise KeyError(f"unknown {side}_id {key!r}: not in the vocabulary of this run")
        return index

    def _users(self) -> np.ndarray:
        if self._user_vectors is None:
            self._require_trained()
            self._user_vectors = self.model.user_embeddings(
                np.arange(self.data.num_users), self._serving_history)
        return self._user_vectors

    def _items(self) -> np.ndarray:
        if self._item_vectors is None:
            self._require_trained()
            self._item_vectors = self.model.item_embeddings()
        return self._item_vectors

    def _user_vector(self, user_id, user_features, history_items) -> tuple[np.ndarray, np.ndarray]:
        """(embedding, indices of items to exclude) for a known or cold-start user."""
        index = self._index.setdefault("user", {v: i for i, v in
                                                enumerate(self._vocab("user"), start=1)})
        known = index.get(str(user_id))
        if known is not None:
            return self._users()[known], self._serving_history[known].indices
        if user_features is None and history_items is None:
            raise KeyError(
                f"unknown user_id {user_id!r}: not in the training vocabulary; pass "
                "user_features={...} (raw feature values, as in users.csv) and/or "
                "history_items=[item ids] to get cold-start recommendations")
        self._require_trained()
        _check_feature_names("user", user_features or {},
                             self.data.feature_specs.get("user", []))
        items = np.asarray([self._known_index("item", i) for i in (history_items or [])],
                           np.int32)
        return (self.model.embed_new("user", user_features or {}, items),
                items.astype(np.int64))

    def __repr__(self) -> str:
        state = "trained" if self._item_vectors is not None or self.training_result else "new"
        return (f"TwoTowerRecallSystem(run_id={self.run_id!r}, dataset="
                f"{self.config.data.dataset!r}, {state})")

