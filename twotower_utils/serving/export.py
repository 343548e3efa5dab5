"""One SavedModel for online recall: raw user features in, top-k item ids and scores out.

`export_recommender(run, path)` wraps a saved run's user tower (`<run>/user_tower/`, which
takes raw features and encodes them with the tower's own Keras preprocessing layers), the
users' known
history (train + validation, fed to the tower and excluded from the results) and an index
over the candidate items' embeddings: exact brute force, or ScaNN's TensorFlow ops. Loading
it needs TensorFlow only (plus `import scann` for the ScaNN variant, which registers its
ops); nothing from this project:

    model = tf.saved_model.load(path)
    out = model.signatures["serving_default"](user_id=tf.constant(["u1"]),
                                              segment=tf.constant(["seg0"]), ...)
    out["item_ids"], out["scores"]            # string [B, k], float32 [B, k], best first

Signatures (B = batch; every raw user feature the tower uses is an input: categorical and
multi-hot as strings, multi-hot `|`-separated, numeric as float64; unknown values and ids are
allowed and behave as in `recommend_items`' cold start):
- `serving_default(user_id, <features>)`;
- `recommend(user_id, <features>, history_item_ids, exclude_item_ids)`: both string
  `[B, None]` padded with ""; `history_item_ids` feeds the tower and is excluded, for users
  outside the vocabulary only (a known user's history is built in); `exclude_item_ids` is
  never returned;
- `user_embedding(user_id, <features>, history_item_ids)` -> `{"embedding": [B, d]}`.
Empty slots (fewer allowed items than k) hold item id "" and score -inf.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from twotower_utils.data.processed import ID_FEATURE
from twotower_utils.io import write_json
from twotower_utils.serving.artifacts import RunArtifacts
from twotower_utils.serving.indexes import INDEXES, apply_scann_params, default_scann_params
from twotower_utils.serving.run import ServingRun, serving_settings

__all__ = ["export_recommender", "export_tower"]


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    """Hold TensorFlow's Python logger at ERROR while a SavedModel is written: saving a Keras
    tower logs "Assets written to <temporary path>" and a get_config warning that would
    otherwise fill every training report, and that say nothing about the run."""
    logger = logging.getLogger("tensorflow")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _table(keys: list[str], first_code: int = 1) -> tf.lookup.StaticHashTable:
    """String -> int64 code (position + first_code); 0 for anything else."""
    values = np.arange(first_code, first_code + len(keys), dtype=np.int64)
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(keys), tf.string),
                                               tf.constant(values))
    return tf.lookup.StaticHashTable(init, default_value=0)


class _Recommender(tf.Module):
    """The exported module (see the module docstring); built by `export_recommender`."""

    def __init__(self, run: ServingRun, k: int, index: str, scann: dict, exclude_seen: bool):
        super().__init__(name="recommender")
        self.user_tower = tf.saved_model.load(str(run.directory / "user_tower"))
        tower_inputs = self.user_tower.signatures["serving_default"].structured_input_signature
        self.tower_keys = set(tower_inputs[1])
        artifacts = run.artifacts or RunArtifacts.load(run.directory)
        specs = artifacts.feature_specs.get("user", [])
        self.specs = [spec for spec in specs if spec["name"] in self.tower_keys]
        # The tower's signature holds the raw feature inputs its preprocessing layers read.
        self.raw_signature = {name: spec for name, spec in tower_inputs[1].items()
                              if name not in ("id", "history")}
        self.has_history = "history" in self.tower_keys
        self.exclude_seen = bool(exclude_seen)
        self.user_table = _table(list(run.user_ids))
        self.item_table = _table(list(run.item_ids))
        id_rows = artifacts.features.get(f"user/{ID_FEATURE}")
        id_rows = np.arange(len(run.user_ids) + 1) if id_rows is None else id_rows
        # Large arrays are variables, so they live in the checkpoint, not the graph proto.
        self.id_rows = tf.Variable(id_rows.astype(np.int64), trainable=False)
        self.history_values = tf.Variable(run.history.indices.astype(np.int64),
                                          trainable=False)
        self.history_splits = tf.Variable(run.history.indptr.astype(np.int64),
                                          trainable=False)
        allowed = np.flatnonzero(run.candidates)
        position = np.full(len(run.candidates), -1, dtype=np.int64)
        position[allowed] = np.arange(len(allowed))
        self.position = tf.Variable(position, trainable=False)
        self.candidate_ids = tf.Variable(run.item_ids[allowed - 1].astype(object).astype(bytes),
                                         trainable=False, dtype=tf.string)
        self.num_candidates, self.k, self.index = len(allowed), int(k), index
        vectors = np.ascontiguousarray(np.asarray(run.item_vectors)[allowed], np.float32)
        if index == "brute_force":
            self.vectors = tf.Variable(vectors, trainable=False)
        else:
            from scann.scann_ops.py import scann_ops

            self.params = default_scann_params(len(allowed), **scann)
            builder = scann_ops.builder(vectors, self.k, "dot_product")
            self.searcher = apply_scann_params(builder, self.params).build().serialize_to_module()

    # -------------------------------------------------------------- pieces
    def _history(self, index: tf.Tensor, known: tf.Tensor,
                 history_ids: tf.Tensor) -> tf.RaggedTensor:
        """Item indices per row: the built-in history of known users, else the given ids."""
        stored = tf.gather(tf.RaggedTensor.from_row_splits(
            self.history_values, self.history_splits, validate=False), index)
        given = self.item_table.lookup(history_ids)
        given = tf.ragged.boolean_mask(given, (given > 0) & ~known[:, None])
        return tf.concat([stored, given], axis=1)

    def _embed(self, user_id, raw, history_ids):
        index = self.user_table.lookup(user_id)
        known = index > 0
        history = self._history(index, known, history_ids)
        inputs = {"id": tf.cast(tf.gather(self.id_rows, index), tf.int32), **raw}
        if self.has_history:
            inputs["history"] = tf.cast(history.to_tensor(0), tf.int32)
        return self.user_tower.serve(inputs)["embedding"], history

    def _search(self, queries: tf.Tensor, excluded: tf.RaggedTensor):
        """Top-k candidate positions and scores per row, never an excluded item."""
        positions = tf.ragged.map_flat_values(tf.gather, self.position, excluded)
        positions = tf.ragged.boolean_mask(positions, positions >= 0)
        k = min(self.k, self.num_candidates)
        if self.index == "brute_force":
            scores = tf.matmul(queries, self.vectors, transpose_b=True)
            where = tf.stack([positions.value_rowids(), positions.flat_values], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, where, tf.fill(tf.shape(where)[:1], -np.inf))
            return tf.math.top_k(scores, k)
        from scann.scann_ops.py import scann_ops

        most = tf.cast(tf.reduce_max(tf.concat([positions.row_lengths(), [0]], 0)), tf.int32)
        fetch = tf.minimum(k + most, self.num_candidates)
        pre = tf.maximum(fetch, self.params.reorder) if self.params.reorder else fetch
        leaves = self.params.num_leaves_to_search if self.params.num_leaves else -1
        found = scann_ops.scann_search_batched(self.searcher.recreate_handle(), queries, fetch,
                                               pre, leaves, True)
        # ScaNN may find fewer than `fetch` (too few points in the searched leaves): the
        # list is then narrower or padded with NaN; pad it to k and treat gaps as -inf.
        short = tf.maximum(k - tf.shape(found.indices)[1], 0)
        indices = tf.pad(found.indices, [[0, 0], [0, short]])
        distances = tf.pad(found.distances, [[0, 0], [0, short]], constant_values=np.nan)
        banned = tf.reduce_any(tf.cast(indices, tf.int64)[:, :, None]
                               == positions.to_tensor(-1)[:, None, :], axis=2)
        scores = tf.where(banned | tf.math.is_nan(distances), -np.inf, distances)
        # ScaNN returns a best-first list; top_k re-sorts it once banned hits are -inf.
        best = tf.math.top_k(scores, k)
        return best.values, tf.gather(indices, best.indices, batch_dims=1)

    def recommend(self, user_id, raw, history_ids, exclude_ids) -> dict[str, tf.Tensor]:
        """Top-k item ids and scores (see the module docstring)."""
        queries, history = self._embed(user_id, raw, history_ids)
        extra = self.item_table.lookup(exclude_ids)
        extra = tf.ragged.boolean_mask(extra, extra > 0)
        excluded = tf.concat([history, extra], axis=1) if self.exclude_seen else extra
        scores, positions = self._search(queries, excluded)
        ids = tf.gather(self.candidate_ids, positions)
        empty = tf.math.is_inf(scores)
        return {"item_ids": tf.where(empty, tf.constant(""), ids), "scores": scores}


def export_recommender(run: ServingRun | RunArtifacts | str | Path, path: str | Path,
                       index: str | None = None, top_k: int | None = None,
                       exclude_seen: bool = True,
                       scann: dict[str, Any] | None = None) -> Path:
    """Write the recommender SavedModel for a saved run.

    Args:
        run: a `ServingRun`, a `RunArtifacts` (saved), a run directory, or a
            `TwoTowerRecallSystem` (saved if needed).
        path: the SavedModel directory (replaced if it exists).
        index: "brute_force" (exact) or "scann" (default: the run config's `serving.index`).
        top_k: list length k (default: `serving.top_k`).
        exclude_seen: exclude a known user's train + validation items, as `recommend_items`.
        scann: `ScannParams` fields overriding `serving.scann` (ScaNN only).

    Returns:
        `path`. A `serving.json` beside `saved_model.pb` describes the inputs and the index.
    """
    if isinstance(run, str | Path):
        run = ServingRun.from_dir(run)
    elif isinstance(run, RunArtifacts):
        run = ServingRun.from_artifacts(run)
    elif not isinstance(run, ServingRun):  # a system (serving may not import it)
        run = ServingRun.from_system(run)
    settings = serving_settings(run.config)
    index = index or settings["index"]
    top_k = settings["top_k"] if top_k is None else top_k
    if index not in INDEXES:
        raise ValueError(f"index = {index!r}: expected one of {', '.join(INDEXES)}")
    if not isinstance(top_k, int | np.integer) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k = {top_k!r}: expected an integer >= 1")
    module = _Recommender(run, top_k, index, {**settings["scann"], **(scann or {})},
                          exclude_seen)
    raw_spec = module.raw_signature
    ids = tf.TensorSpec([None], tf.string, name="user_id")
    history_spec = tf.TensorSpec([None, None], tf.string, name="history_item_ids")
    exclude_spec = tf.TensorSpec([None, None], tf.string, name="exclude_item_ids")

    def split(kwargs):
        return kwargs.pop("user_id"), kwargs

    @tf.function(input_signature=[{"user_id": ids, **raw_spec}])
    def serving_default(inputs):
        user_id, raw = split(dict(inputs))
        empty = tf.fill([tf.size(user_id), 0], "")
        return module.recommend(user_id, raw, empty, empty)

    @tf.function(input_signature=[{"user_id": ids, **raw_spec, "history_item_ids": history_spec,
                                   "exclude_item_ids": exclude_spec}])
    def recommend(inputs):
        inputs = dict(inputs)
        history, exclude = inputs.pop("history_item_ids"), inputs.pop("exclude_item_ids")
        user_id, raw = split(inputs)
        return module.recommend(user_id, raw, history, exclude)

    @tf.function(input_signature=[{"user_id": ids, **raw_spec, "history_item_ids": history_spec}])
    def user_embedding(inputs):
        inputs = dict(inputs)
        history = inputs.pop("history_item_ids")
        user_id, raw = split(inputs)
        return {"embedding": module._embed(user_id, raw, history)[0]}

    signatures = {"serving_default": serving_default, "recommend": recommend,
                  "user_embedding": user_embedding}
    module.serve, module.recommend_fn, module.embed_fn = (serving_default, recommend,
                                                          user_embedding)
    path = Path(path)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
    with _quiet_tensorflow_logger():
        tf.saved_model.save(module, str(path), signatures=signatures, options=options)
    write_json(path / "serving.json", {
        "index": index, "k": int(top_k), "exclude_seen": bool(exclude_seen),
        "scann": module.params.to_dict() if index == "scann" else None,
        "needs": ["tensorflow"] + (["scann (import scann before loading)"]
                                   if index == "scann" else []),
        "inputs": {"user_id": "string [B]", **{
            spec["name"]: ("float64 [B]" if spec["type"] == "numeric" else
                           "string [B] ('|'-separated)" if spec["type"] == "multi_hot"
                           else "string [B]") for spec in module.specs}},
        "outputs": {"item_ids": f"string [B, {top_k}]", "scores": f"float32 [B, {top_k}]"},
        "num_candidates": module.num_candidates, "run": str(run.directory)})
    return path


def export_tower(model, side: str, path: str | Path) -> None:
    """Save one tower of `model` as a SavedModel with a `serving_default` signature.

    The signature takes raw rows (`Tower.raw_signature`: `id` int32 `[B]` = the
    `<side>/__id__` row, 0 if unknown; each raw feature, string `[B]` or float64 `[B]` for a
    numeric one, encoded in-graph by the tower's own preprocessing layers; `history` int32
    `[B, L]` item indices padded with 0, for a user tower with history) and returns
    `{"embedding": float32 [B, d]}`.
    """
    tower = model.user_tower if side == "user" else model.item_tower
    module = tf.Module()
    module.tower = tower
    module.serve = tf.function(lambda inputs: {"embedding": tower.serve(inputs)},
                               input_signature=[tower.raw_signature()])
    with _quiet_tensorflow_logger():
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
