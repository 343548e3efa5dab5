"""Serving a trained run: embedding export, indexes, offline batch top-k, SavedModel export.

Everything here starts from a saved run directory (`models/<run_id>/`, written by
`TwoTowerRecallSystem.save`), so serving needs neither the training data nor the model code:

    run = ServingRun.from_dir("models/<run_id>")          # or ServingRun.from_system(system)
    export_embeddings(run, "exports/<run_id>")             # Parquet (or .npy + ids)
    recommend_to_file(run, "recs.parquet", top_k=10, index="scann")   # chunked, all users
    export_recommender(run, "exports/<run_id>/recommender", index="scann")  # one SavedModel

Indexes (`brute_force`, `scann`) come from `twotower_utils.serving.indexes`; the `serving`
section of the configuration, when present, picks the default (`serving_settings`). This
module imports neither TensorFlow nor ScaNN itself: `export_recommender` (TensorFlow) and the
ScaNN index load them when called.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.config import ServingConfig
from twotower_utils.io import write_json
from twotower_utils.serving.artifacts import RunArtifacts
from twotower_utils.serving.indexes import INDEXES, ScannParams, build_index

__all__ = ["SERVING_DEFAULTS", "ServingRun", "export_embeddings", "export_recommender",
           "main", "recommend_to_file", "serving_settings"]

# The configuration's `serving` section as shipped (`ServingConfig`'s defaults, which are
# config.json's); a ScaNN size of None is sized from the catalogue
# (`indexes.default_scann_params`).
SERVING_DEFAULTS: dict[str, Any] = dataclasses.asdict(ServingConfig())


def serving_settings(config: Any = None) -> dict[str, Any]:
    """The serving settings: `SERVING_DEFAULTS` overlaid with the config's `serving` section.

    Takes a `Config` (or a dict shaped like config.json, or None); returns a plain dict with
    `index`, `top_k`, `batch_chunk_size` and `scann` (a dict of `ScannParams` fields).
    """
    section = None
    if isinstance(config, dict):
        section = config.get("serving")
    elif config is not None:
        section = getattr(config, "serving", None)
    if dataclasses.is_dataclass(section):
        section = dataclasses.asdict(section)
    settings = {**SERVING_DEFAULTS, "scann": dict(SERVING_DEFAULTS["scann"])}
    for key, value in (section or {}).items():
        if key == "scann":
            settings["scann"].update(value or {})
        else:
            settings[key] = value
    if settings["index"] not in INDEXES:
        raise ValueError(f"serving.index = {settings['index']!r}: expected one of "
                         f"{', '.join(INDEXES)}")
    unknown = set(settings["scann"]) - set(ScannParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"serving.scann keys {sorted(unknown)}: expected some of "
                         f"{sorted(ScannParams.__dataclass_fields__)}")
    return settings


@dataclass
class ServingRun:
    """The serving view of a saved run (row = index; index 0 is the out-of-vocabulary slot).

    Attributes: `directory`; `user_ids` / `item_ids` (str arrays, id of index p + 1 at
    position p); `user_vectors` `[num_users, d]` and `item_vectors` `[num_items, d]`
    (memory-mapped float32); `history` (csr `[num_users, num_items]`, the train + validation
    positives that are excluded from recommendations); `candidates` (bool `[num_items]`, the
    recommendable items); `config` (the run's resolved configuration, a dict); `artifacts`
    (the `RunArtifacts` these are views of, which reads and writes the run's files).
    """

    directory: Path
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    history: sp.csr_matrix
    candidates: np.ndarray
    config: dict[str, Any]
    artifacts: RunArtifacts | None = field(default=None, repr=False)

    @classmethod
    def from_dir(cls, run_dir: str | Path) -> ServingRun:
        """Load a run directory written by `TwoTowerRecallSystem.save` (`RunArtifacts.load`).

        Raises `RunDirectoryError` naming a missing or damaged file (`artifacts.check_run_dir`).
        """
        return cls.from_artifacts(RunArtifacts.load(run_dir))

    @classmethod
    def from_artifacts(cls, artifacts: RunArtifacts) -> ServingRun:
        """The serving view of a loaded or saved `RunArtifacts` (it must have a `directory`:
        the SavedModel export reads the run's user tower from it)."""
        if artifacts.directory is None:
            raise ValueError("artifacts: not saved yet (no directory); save() it first")
        return cls(
            directory=Path(artifacts.directory),
            user_ids=np.asarray(artifacts.user_vocab, dtype=object).astype(str),
            item_ids=np.asarray(artifacts.item_vocab, dtype=object).astype(str),
            user_vectors=artifacts.user_embeddings, item_vectors=artifacts.item_embeddings,
            history=artifacts.history, candidates=artifacts.candidates,
            config=artifacts.config, artifacts=artifacts)

    @classmethod
    def from_system(cls, system) -> ServingRun:
        """The run of a `TwoTowerRecallSystem` (saved first if it has no run directory yet);
        the system's own `RunArtifacts` when they are those of its run directory, else the
        directory read back."""
        run_dir = getattr(system, "run_dir", None)
        if run_dir is None or not Path(run_dir).is_dir():
            run_dir = system.save()
        artifacts = getattr(system, "artifacts", None)
        if artifacts is not None and artifacts.directory == Path(run_dir):
            return cls.from_artifacts(artifacts)
        return cls.from_dir(run_dir)

    @property
    def dim(self) -> int:
        """The embedding size."""
        return int(self.item_vectors.shape[1])

    def user_indices(self, user_ids: Iterable) -> np.ndarray:
        """Indices (int64) of known user ids; a KeyError names the first unknown ones."""
        lookup = pd.Index(self.user_ids)
        wanted = pd.Index([str(u) for u in user_ids])
        position = lookup.get_indexer(wanted)
        unknown = wanted[position < 0]
        if len(unknown):
            raise KeyError(f"user_ids: {len(unknown)} not in this run's vocabulary (e.g. "
                           f"{', '.join(map(repr, unknown[:5]))}); batch recommendation "
                           "serves known users, new users go through export_recommender")
        return position.astype(np.int64) + 1

    def build_index(self, name: str | None = None, **params):
        """An index over the run's candidate items (default: the run config's
        `serving.index`); `params` override the configured ScaNN settings."""
        settings = serving_settings(self.config)
        name = name or settings["index"]
        if name == "scann":
            params = {**settings["scann"], **params}
        return build_index(name, np.asarray(self.item_vectors), self.candidates, **params)


def export_embeddings(run: ServingRun, directory: str | Path,
                      fmt: str = "parquet") -> dict[str, Path]:
    """Write the run's user and item embeddings with their ids for other serving systems.

    Args:
        run: a `ServingRun`.
        directory: created if needed.
        fmt: "parquet" (`users.parquet` / `items.parquet`: id, `embedding` as a fixed-size
            float32 list; items also `candidate`) or "npy" (`user_embeddings.npy` +
            `user_ids.txt`, one id per line in row order; the same for items, plus
            `item_candidates.npy`).

    Returns:
        `{"users": path, "items": path, "manifest": path}`; `manifest.json` records the
        dimension, similarity, counts and format. Index 0 (out-of-vocabulary) is left out.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in ("parquet", "npy"):
        raise ValueError(f"fmt = {fmt!r}: expected 'parquet' or 'npy'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for side, ids, vectors in (("user", run.user_ids, run.user_vectors),
                               ("item", run.item_ids, run.item_vectors)):
        rows = np.ascontiguousarray(vectors[1:], dtype=np.float32)
        if fmt == "parquet":
            flat = pa.array(rows.reshape(-1), type=pa.float32())
            columns = {f"{side}_id": pa.array(ids, type=pa.string()),
                       "embedding": pa.FixedSizeListArray.from_arrays(flat, run.dim)}
            if side == "item":
                columns["candidate"] = pa.array(run.candidates[1:])
            path = directory / f"{side}s.parquet"
            pq.write_table(pa.table(columns), path)
        else:
            path = directory / f"{side}_embeddings.npy"
            np.save(path, rows)
            (directory / f"{side}_ids.txt").write_text("\n".join(ids) + "\n")
            if side == "item":
                np.save(directory / "item_candidates.npy", run.candidates[1:])
        written[f"{side}s"] = path
    model = run.config.get("model", {})
    written["manifest"] = write_json(directory / "manifest.json", {
        "format": fmt, "dim": run.dim, "similarity": model.get("similarity", "dot"),
        "temperature": model.get("temperature", 1.0), "num_users": len(run.user_ids),
        "num_items": len(run.item_ids), "num_candidates": int(run.candidates[1:].sum()),
        "run": str(run.directory)})
    return written


def recommend_to_file(run: ServingRun, path: str | Path, user_ids: Iterable | None = None,
                      top_k: int | None = None, index: Any = None, exclude_seen: bool = True,
                      chunk_size: int | None = None) -> dict[str, Any]:
    """Top-k for many known users, written chunk by chunk to Parquet or CSV.

    Args:
        run: a `ServingRun`.
        path: the output file; `.parquet` or `.csv` (written to a temporary file beside it
            and renamed when complete). Columns: `user_id`, `item_id`, `rank` (1 = best),
            `score`.
        user_ids: the users (default: every user of the run).
        top_k: list length (default: `serving.top_k` of the run config).
        index: "brute_force", "scann", or a built index (default: `serving.index`).
        exclude_seen: never recommend a user's train + validation items.
        chunk_size: users scored per chunk (default: `serving.batch_chunk_size`), which
            bounds memory: one chunk's vectors and results are held at a time.

    Returns:
        `{"path", "users", "rows", "index"}`.
    """
    settings = serving_settings(run.config)
    top_k = settings["top_k"] if top_k is None else top_k
    chunk_size = settings["batch_chunk_size"] if chunk_size is None else chunk_size
    if not isinstance(top_k, int | np.integer) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k = {top_k!r}: expected an integer >= 1")
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size!r}: expected an integer >= 1")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"path = {str(path)!r}: expected a .parquet or .csv file name")
    users = (np.arange(1, len(run.user_ids) + 1) if user_ids is None
             else run.user_indices(user_ids))
    if index is None or isinstance(index, str):
        index = run.build_index(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rows = 0
    writer = None
    try:
        for start in range(0, len(users), chunk_size):
            chunk = users[start:start + chunk_size]
            exclude = run.history[chunk] if exclude_seen else None
            top_idx, top_scores = index.search(np.asarray(run.user_vectors[chunk]), top_k,
                                               exclude=exclude)
            r, c = np.nonzero(top_idx >= 0)
            frame = pd.DataFrame({"user_id": run.user_ids[chunk[r] - 1],
                                  "item_id": run.item_ids[top_idx[r, c] - 1],
                                  "rank": (c + 1).astype(np.int32),
                                  "score": top_scores[r, c]})
            writer = _write_chunk(frame, tmp, suffix, writer, first=start == 0)
            rows += len(frame)
        if not len(users):  # still a valid, empty file with the columns
            writer = _write_chunk(pd.DataFrame({"user_id": [], "item_id": [], "rank": [],
                                                "score": []}), tmp, suffix, None, first=True)
        if writer is not None:
            writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": path, "users": int(len(users)), "rows": rows, "index": index.name}


def _write_chunk(frame: pd.DataFrame, path: Path, suffix: str, writer, first: bool):
    """Append one chunk; returns the open Parquet writer (None for CSV)."""
    if suffix == ".csv":
        frame.to_csv(path, mode="w" if first else "a", header=first, index=False)
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                        ("rank", pa.int32()), ("score", pa.float32())])
    table = pa.Table.from_pandas(frame.astype({"rank": np.int32, "score": np.float32}),
                                 schema=schema, preserve_index=False)
    if writer is None:
        writer = pq.ParquetWriter(path, schema)
    writer.write_table(table)
    return writer


def export_recommender(run: ServingRun | str | Path, path: str | Path, **options) -> Path:
    """Export one SavedModel: raw user features in, top-k item ids and scores out.

    A thin wrapper (this module stays TensorFlow-free) over
    `twotower_utils.serving.export.export_recommender`; see there for the options and signatures.
    """
    from twotower_utils.serving.export import export_recommender as export

    return export(run, path, **options)


def main(argv: list[str] | None = None) -> int:
    """CLI over a saved run: `export` (SavedModel), `embeddings`, `batch`; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m twotower_utils.serving",
                                     description="Serve a saved run (models/<run_id>).")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="the recommender SavedModel")
    embeddings = commands.add_parser("embeddings", help="embeddings + ids (Parquet or .npy)")
    batch = commands.add_parser("batch", help="top-k for all (or given) users to a file")
    for sub in (export, embeddings, batch):
        sub.add_argument("run", help="the run directory, e.g. models/<run_id>")
        sub.add_argument("output", help="SavedModel directory, export directory or file")
    for sub in (export, batch):
        sub.add_argument("--index", choices=INDEXES, help="default: serving.index")
        sub.add_argument("-k", "--top-k", type=int, help="default: serving.top_k")
    export.add_argument("--keep-seen", action="store_true", help="do not exclude seen items")
    embeddings.add_argument("--format", choices=("parquet", "npy"), default="parquet")
    batch.add_argument("--users", help="a file of user ids, one per line (default: all)")
    batch.add_argument("--chunk-size", type=int, help="default: serving.batch_chunk_size")
    args = parser.parse_args(argv)
    run = ServingRun.from_dir(args.run)
    if args.command == "export":
        path = export_recommender(run, args.output, index=args.index, top_k=args.top_k,
                                  exclude_seen=not args.keep_seen)
        print(f"SavedModel written to {path} (see {Path(path) / 'serving.json'})")
    elif args.command == "embeddings":
        written = export_embeddings(run, args.output, args.format)
        print("written: " + ", ".join(str(p) for p in written.values()))
    else:
        users = (Path(args.users).read_text().split() if args.users else None)
        info = recommend_to_file(run, args.output, users, args.top_k, args.index,
                                 chunk_size=args.chunk_size)
        print(f"{info['rows']:,} recommendations for {info['users']:,} users "
              f"({info['index']}) written to {info['path']}")
    return 0


if __name__ == "__main__":
    # The package's copy of `main`, not this `__main__` one: the objects it makes are then
    # the `ServingRun` that `export` checks for with isinstance.
    from twotower_utils.serving.run import main as package_main

    raise SystemExit(package_main())
