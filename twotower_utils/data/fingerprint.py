"""What shapes a run's processed data, as one short digest: the key of `data/processed/`.

Two runs whose data settings agree share `data/processed/<dataset>-<digest>/` (a second run
reuses the first one's split and is fast); runs that differ in any of them get their own
directory, so no run ever reads another run's split. The settings are the whole `data`
section except where files live (`ml100k_dir`, `*_csv`: their content counts, not their
path), the synthetic generator's settings only for the synthetic dataset, and the two
`model.use_*_features` switches the data stage reads. For a `csv` dataset the sha256 of each
of its files is part of the key, so editing `interactions.csv` gives a new directory.
`FORMAT_VERSION`, the layout and meaning of what the data stage writes, is part of it too:
a release that changes them never reads processed data an older one left behind.
MovieLens-100K is verified against its published hash when it is fetched, so its settings
alone identify it.

No pandas and no TensorFlow here: every stage computes this before it reads anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataFingerprint", "FINGERPRINT_FILE", "FORMAT_VERSION", "data_fingerprint",
           "describe_differences"]

FINGERPRINT_FILE = "fingerprint.json"  # inside a processed-data directory and a saved run
# Bump whenever the data stage writes something different for the same settings (a new file,
# a changed encoding, a fixed split): the digest changes, so stale processed data is not reused.
# 3: features.npz holds raw feature values (the towers encode them), not codes.
FORMAT_VERSION = 3
_PATH_KEYS = ("ml100k_dir", "users_csv", "items_csv", "interactions_csv")
_CSV_KEYS = ("users_csv", "items_csv", "interactions_csv")
_file_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


@dataclass(frozen=True)
class DataFingerprint:
    """`digest` (12 hex characters) of `settings` (flat `{dotted key: value}`, file hashes
    included as `data.<file>.sha256`)."""

    digest: str
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """`{"digest": ..., "settings": {...}}`, as written to `fingerprint.json`."""
        return {"digest": self.digest, "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DataFingerprint:
        """The inverse of `to_dict`."""
        return cls(str(payload["digest"]), dict(payload["settings"]))


def data_fingerprint(config) -> DataFingerprint:
    """The fingerprint of the processed data `config` (a `Config`) makes.

    Raises FileNotFoundError naming the config key of a csv dataset's missing file.
    """
    data = config.to_dict()["data"]
    settings: dict[str, Any] = {"format_version": FORMAT_VERSION}
    for key, value in data.items():
        if key in _PATH_KEYS or (key == "synthetic" and data["dataset"] != "synthetic"):
            continue
        if isinstance(value, dict) and key in ("split", "synthetic"):
            settings.update({f"data.{key}.{k}": v for k, v in value.items()})
        else:
            settings[f"data.{key}"] = value
    for side in ("user", "item"):
        settings[f"model.use_{side}_features"] = getattr(config.model, f"use_{side}_features")
    if data["dataset"] == "csv":
        for key in _CSV_KEYS:
            if data[key] is None:
                continue
            path = Path(data[key])
            path = path if path.is_absolute() else config.root / path
            settings[f"data.{key}.sha256"] = _sha256(path, key)
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return DataFingerprint(hashlib.sha256(encoded).hexdigest()[:12], settings)


def describe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """`key: recorded -> current` for every setting that differs, joined by "; "."""
    keys = sorted(set(recorded) | set(current))
    changed = [f"{key}: {recorded.get(key, '<unset>')!r} -> {current.get(key, '<unset>')!r}"
               for key in keys if recorded.get(key) != current.get(key)]
    return "; ".join(changed) or "no setting differs"


def _sha256(path: Path, key: str) -> str:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"data.{key} = {str(path)!r}: no such file") from None
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _file_hashes[cache_key] = digest.hexdigest()
    return _file_hashes[cache_key]
