"""Small file helpers shared by every stage that writes results."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only if the block succeeds.

    The temporary directory sits beside `target` (same filesystem, so the final rename is
    atomic). On an exception it is removed and any previous `target` is left untouched; on
    success the previous `target` is swapped out and deleted after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    # The pid in the name lets a later write tell an abandoned staging folder (its writer
    # was killed) from one being written right now.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-",
                                    dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete the staging/old folders `atomic_directory` left beside `target` when its
    writer was killed (their pid no longer runs); returns what was removed."""
    target = Path(target)
    removed = []
    for path in target.parent.glob(f".{target.name}.*"):
        match = _TEMPORARY.fullmatch(path.name[len(target.name) + 1:])
        if match and path.is_dir() and not _running(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


_TEMPORARY = re.compile(r"\.(?:tmp|old)-(\d+)(?:-.*)?")


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def write_json(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON (numpy scalars converted); returns the path.

    The text goes to a temporary file beside `path` first and replaces it in one rename, so
    an interruption never leaves a half-written file (a run's manifest or metrics, a
    summary): the old one stays whole. The payload is serialised before anything is written.
    """
    path = Path(path)
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    # Named by process, opened normally (so the file gets the usual permissions, not
    # mkstemp's 0600: reports are shared).
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
