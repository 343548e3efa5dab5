"""A saved run's directory: its format (`RunArtifacts`), manifest, where a save may write,
and checks on load.

`RunArtifacts` is the one reader and writer of a run directory's files: the system saves
and loads through it and serving views it (`ServingRun`). A run directory
(`models/<run_id>/`, or any directory given to `save`) is recognised by its `manifest.json`
(`{"kind": "twotower-run", ...}`), written last. `save` only ever writes a new directory, an
empty one, or one that is itself a saved run: anything else (a user's folder, `models/`
itself) is refused, never deleted. `check_run_dir` names the missing or damaged file of a
run folder and says that the run must be saved again, instead of a raw errno, an EOFError
or a broadcasting error at recommend time.

No TensorFlow here (serving reads run folders without it): the model's weights and
towers are written by the caller of `RunArtifacts.save`, into its staging directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from twotower_utils.data.fingerprint import FINGERPRINT_FILE
from twotower_utils.data.processed import IndexCounts
from twotower_utils.io import atomic_directory, read_json, remove_stale_temporaries, write_json

__all__ = ["MANIFEST", "RUN_KIND", "RunArtifacts", "RunDirectoryError", "check_run_dir",
           "check_save_target", "is_saved_run", "load_history", "save_history",
           "write_manifest"]

MANIFEST = "manifest.json"
RUN_KIND = "twotower-run"
# 2: features.npz holds raw feature values and the towers encode them (their own layers).
FORMAT_VERSION = 2
# What `TwoTowerRecallSystem.load` and the serving tools read; the rest is optional.
REQUIRED = ("config.json", "vocabularies.json", "feature_specs.json", "features.npz",
            "history.npz", "candidates.npy", "user_embeddings.npy", "item_embeddings.npy")


class RunDirectoryError(ValueError):
    """A run directory is missing, not a saved run, or damaged (the message names the file)."""


def is_saved_run(directory: Path) -> bool:
    """True when `directory` holds a manifest written by `write_manifest`."""
    try:
        return read_json(Path(directory) / MANIFEST).get("kind") == RUN_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_save_target(target: str | Path) -> Path:
    """Return `target` if a run may be saved there, else raise FileExistsError.

    Allowed: a path that does not exist, an empty directory, or a saved run (replaced as a
    whole). Stale temporary folders of interrupted saves beside it are removed first.
    """
    target = Path(target)
    if target.parent.is_dir():
        remove_stale_temporaries(target)
    if not target.exists():
        return target
    if target.is_dir() and (is_saved_run(target) or not any(target.iterdir())):
        return target
    what = "a file" if not target.is_dir() else "a directory that is not a saved run"
    raise FileExistsError(
        f"cannot save the run to {target}: it is {what} (no {MANIFEST} of a twotower run), "
        "and saving would replace it; pick a new directory, or move it away yourself")


def write_manifest(directory: Path, run_id: str, extra: dict[str, Any] | None = None) -> Path:
    """Write `manifest.json` (kind, format, run id, time, files) into `directory`: last, so
    a folder with a manifest is a complete save."""
    files = sorted(p.name for p in Path(directory).iterdir())
    payload = {"kind": RUN_KIND, "format": FORMAT_VERSION, "run_id": run_id,
               "saved": time.strftime("%Y-%m-%d %H:%M:%S"), "files": files, **(extra or {})}
    return write_json(Path(directory) / MANIFEST, payload)


def check_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Check a saved run before it is loaded; returns its manifest.

    Raises RunDirectoryError for a run saved in another format (`FORMAT_VERSION` of its
    manifest; a run without a manifest is older than any), naming the missing or unreadable
    file, or the embedding table whose shape disagrees with the vocabularies, and saying the
    run must be saved again.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory; runs are written by "
                                "TwoTowerRecallSystem.save() (models/<run_id>/)")
    remove_stale_temporaries(run_dir)
    manifest = read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).is_file() else {}
    saved_format = manifest.get("format", 0)
    if saved_format != FORMAT_VERSION:
        raise RunDirectoryError(
            f"{run_dir}: saved in run format {saved_format}, this release reads format "
            f"{FORMAT_VERSION} (format 2 stores raw features, which the towers encode "
            "themselves); the run must be trained and saved again (rerun its training stage)")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise RunDirectoryError(
            f"{run_dir}: not a complete saved run (missing {', '.join(missing)}); the run "
            "must be saved again (TwoTowerRecallSystem.save(), or rerun its training stage)")
    try:
        vocab = read_json(run_dir / "vocabularies.json")
        sizes = {"user": len(vocab["user_id"]) + 1, "item": len(vocab["item_id"]) + 1}
    except (ValueError, KeyError, TypeError) as err:
        raise _damaged(run_dir, "vocabularies.json", err) from None
    dims = set()
    for side, rows in sizes.items():
        name = f"{side}_embeddings.npy"
        try:
            table = np.load(run_dir / name, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise _damaged(run_dir, name, err) from None
        if table.ndim != 2 or table.shape[0] != rows:
            raise _damaged(run_dir, name, f"shape {table.shape}, expected ({rows}, d) for "
                           f"the {rows - 1:,} {side} ids of vocabularies.json (+ 1 unknown)")
        dims.add(table.shape[1])
    if len(dims) != 1:
        raise _damaged(run_dir, "item_embeddings.npy",
                       f"embedding sizes {sorted(dims)} differ between users and items")
    return manifest


@dataclass
class RunArtifacts(IndexCounts):
    """What a saved run is: the files of `models/<run_id>/`, as Python objects.

    Indices: id at vocabulary position p has index p + 1; index 0 is out-of-vocabulary.

    Attributes:
        config: the run's resolved configuration (config.json, a dict).
        user_vocab / item_vocab: the ids (vocabularies.json), lists of str.
        features: the raw feature tables, `{"user/<col>": array, ...}` (features.npz).
        feature_specs: `{"user": [spec, ...], "item": [...]}` (feature_specs.json).
        history: csr `[num_users, num_items]`, the train + validation positives that serving
            feeds the user tower and excludes (history.npz).
        candidates: bool `[num_items]`, the recommendable items (candidates.npy).
        user_embeddings / item_embeddings: float32 `[num_users, d]` / `[num_items, d]`;
            memory-mapped when loaded (a catalogue's table need not fit in memory).
        training_history / training_summary: training_history.json / training.json, or None.
        metrics: metrics.json (`{}` when the run was not evaluated).
        fingerprint: fingerprint.json (the data stage's settings it was trained on), or None.
        directory / manifest: where it was loaded from or saved to, and its manifest.json.
    """

    config: dict[str, Any]
    user_vocab: list[str]
    item_vocab: list[str]
    features: dict[str, np.ndarray]
    feature_specs: dict[str, list[dict[str, Any]]]
    history: sp.csr_matrix
    candidates: np.ndarray
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    training_history: dict[str, Any] | None = None
    training_summary: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None
    directory: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def save(self, directory: str | Path, run_id: str,
             write_more: Callable[[Path], None] | None = None) -> Path:
        """Write the run directory atomically; returns it (also kept in `directory`).

        Takes the target (new, empty or a saved run, as `check_save_target`: else
        FileExistsError and nothing is deleted), the run id for the manifest, and
        `write_more(staging)`, called with the staging directory before the manifest, for
        the parts this module cannot write without TensorFlow (the system's `weights/`,
        `user_tower/` and `item_tower/`). Everything goes to a staging directory renamed
        over the target at the end, `manifest.json` last: a folder with a manifest is whole.
        """
        target = check_save_target(directory)
        with atomic_directory(target) as staging:
            write_json(staging / "config.json", self.config)
            write_json(staging / "vocabularies.json",
                       {"user_id": list(self.user_vocab), "item_id": list(self.item_vocab)})
            write_json(staging / "feature_specs.json", self.feature_specs)
            np.savez(staging / "features.npz", **self.features)
            save_history(staging / "history.npz", self.history)
            np.save(staging / "candidates.npy", np.asarray(self.candidates))
            np.save(staging / "user_embeddings.npy", np.asarray(self.user_embeddings))
            np.save(staging / "item_embeddings.npy", np.asarray(self.item_embeddings))
            for name, value in (("training_history.json", self.training_history),
                                ("training.json", self.training_summary),
                                ("metrics.json", self.metrics),
                                (FINGERPRINT_FILE, self.fingerprint)):
                if value:  # optional parts: absent rather than empty when unknown
                    write_json(staging / name, value)
            if write_more is not None:
                write_more(staging)
            write_manifest(staging, run_id)
        self.directory = target
        self.manifest = read_json(target / MANIFEST)
        return target

    @staticmethod
    def record_metrics(directory: str | Path, metrics: dict[str, Any]) -> Path:
        """Write a saved run's `metrics.json` (its test metrics, known after the save) and
        list it in the manifest; returns the file. `write_json` replaces each file in one
        rename, so an interruption leaves the old one whole. Raises RunDirectoryError if `directory`
        is not a saved run."""
        directory = Path(directory)
        if not is_saved_run(directory):
            raise RunDirectoryError(f"{directory}: not a saved run (no {MANIFEST}); save the "
                                    "run before recording its metrics")
        target = write_json(directory / "metrics.json", metrics)
        manifest = read_json(directory / MANIFEST)
        if target.name not in manifest.get("files", []):
            manifest["files"] = sorted([*manifest.get("files", []), target.name])
            write_json(directory / MANIFEST, manifest)
        return target

    @classmethod
    def load(cls, directory: str | Path) -> RunArtifacts:
        """Read a run directory written by `save` (or `TwoTowerRecallSystem.save`).

        Takes the directory; returns its `RunArtifacts`, embeddings memory-mapped. Raises
        RunDirectoryError naming a missing or damaged file (`check_run_dir`, run first).
        """
        directory = Path(directory)
        manifest = check_run_dir(directory)
        vocab = read_json(directory / "vocabularies.json")
        with np.load(directory / "features.npz") as archive:
            features = {key: archive[key] for key in archive.files}

        def optional(name: str):
            return read_json(directory / name) if (directory / name).is_file() else None

        return cls(
            config=read_json(directory / "config.json"),
            user_vocab=[str(v) for v in vocab["user_id"]],
            item_vocab=[str(v) for v in vocab["item_id"]],
            features=features, feature_specs=read_json(directory / "feature_specs.json"),
            history=load_history(directory / "history.npz"),
            candidates=np.load(directory / "candidates.npy"),
            user_embeddings=np.load(directory / "user_embeddings.npy", mmap_mode="r"),
            item_embeddings=np.load(directory / "item_embeddings.npy", mmap_mode="r"),
            training_history=optional("training_history.json"),
            training_summary=optional("training.json"), metrics=optional("metrics.json") or {},
            fingerprint=optional(FINGERPRINT_FILE), directory=directory, manifest=manifest)


def save_history(path: Path, matrix: sp.csr_matrix) -> None:
    """Write a binary user x item csr matrix (a run's train + validation positives) as npz."""
    np.savez(path, indptr=matrix.indptr, indices=matrix.indices, shape=np.asarray(matrix.shape))


def load_history(path: Path) -> sp.csr_matrix:
    """Read what `save_history` wrote: float32 ones at the stored positions."""
    with np.load(path) as archive:
        indices = archive["indices"]
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, archive["indptr"]),
                             shape=tuple(int(v) for v in archive["shape"]))


def _damaged(run_dir: Path, name: str, problem: Any) -> RunDirectoryError:
    return RunDirectoryError(f"{run_dir / name}: damaged ({problem}); the run must be saved "
                             "again (TwoTowerRecallSystem.save(), or rerun its training stage)")
