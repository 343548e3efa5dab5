"""A saved run's directory: its manifest, where a save may write, and checks on load.

A run directory (`models/<run_id>/`, or any directory given to `save`) is recognised by its
`manifest.json` (`{"kind": "twotower-run", ...}`), written last. `save` only ever writes a
new directory, an empty one, or one that is itself a saved run: anything else (a user's
folder, `models/` itself) is refused, never deleted. `check_run_dir` names the missing or
damaged file of a run folder and says that the run must be saved again, instead of a raw
errno, an EOFError or a broadcasting error at recommend time.

No TensorFlow here (serving reads run folders without it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from twotower_utils.io import read_json, remove_stale_temporaries, write_json

__all__ = ["MANIFEST", "RUN_KIND", "RunDirectoryError", "check_run_dir", "check_save_target",
           "load_history", "save_history", "write_manifest"]

MANIFEST = "manifest.json"
RUN_KIND = "twotower-run"
FORMAT_VERSION = 1
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
    """Check a saved run before it is loaded; returns its manifest (`{}` for runs saved
    before manifests existed).

    Raises RunDirectoryError naming the missing or unreadable file, or the embedding table
    whose shape disagrees with the vocabularies, and saying the run must be saved again.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory; runs are written by "
                                "TwoTowerRecallSystem.save() (models/<run_id>/)")
    remove_stale_temporaries(run_dir)
    manifest = read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).is_file() else {}
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
