"""Reading back what `DataPreprocessor.save_processed_data` wrote (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twotower_utils.data.fingerprint import FINGERPRINT_FILE
from twotower_utils.io import read_json

# The per-side feature table mapping an index to its id-embedding row (0 when unseen in
# training): `features["user/__id__"]`, written by the data stage, read by the model and by
# serving's export.
ID_FEATURE = "__id__"
# Optional: processed data written before explicit negatives were saved has none.
EXPLICIT_NEGATIVES_FILE = "explicit_negatives.parquet"
REQUIRED_FILES = (
    "train.parquet", "validation.parquet", "test.parquet", "negatives.parquet",
    "vocabularies.json", "feature_specs.json", "features.npz", "history.npz", "stats.json",
)


class IndexCounts:
    """`num_users` / `num_items` of an object with `user_vocab` / `item_vocab` (lists of ids):
    the index space, vocabulary position p at index p + 1 and 0 out of vocabulary. Shared by
    `ProcessedData` and a saved run's `RunArtifacts`."""

    @property
    def num_users(self) -> int:
        """Number of user indices, including the out-of-vocabulary slot 0."""
        return len(self.user_vocab) + 1

    @property
    def num_items(self) -> int:
        """Number of item indices, including the out-of-vocabulary slot 0."""
        return len(self.item_vocab) + 1


@dataclass
class ProcessedData(IndexCounts):
    """Splits, vocabularies, raw features and training history of one dataset.

    Indices: id at vocabulary position p has index p + 1; index 0 is out-of-vocabulary.
    `features["user/<col>"]` / `features["item/<col>"]` are tables with one row per index of
    the raw values (`data.features.raw_feature_values`: stripped strings, "" = missing, or
    float64, NaN = missing; row 0 is missing), which the towers' own layers encode;
    `features["user/__id__"]` maps an index to its id-embedding row (0 when unseen in training).
    `history` is the csr matrix [num_users, num_items] of training positives.
    `explicit_negatives`: the label-0 rows, never a positive of their user, with a `split`
    column (train / validation / test); empty when the data has none.
    """

    directory: Path
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    negatives: pd.DataFrame
    user_vocab: list[str]
    item_vocab: list[str]
    features: dict[str, np.ndarray]
    feature_specs: dict[str, list[dict[str, Any]]]
    history: sp.csr_matrix
    stats: dict[str, Any]
    fingerprint: dict[str, Any] | None = None  # fingerprint.json: the settings that made it
    explicit_negatives: pd.DataFrame = field(default_factory=lambda: empty_explicit_negatives())
    _user_index: dict[str, int] = field(default_factory=dict, repr=False)
    _item_index: dict[str, int] = field(default_factory=dict, repr=False)

    def user_index(self, user_id: Any) -> int:
        """Index of `user_id` (0 when unknown)."""
        if not self._user_index:
            self._user_index = {uid: i for i, uid in enumerate(self.user_vocab, start=1)}
        return self._user_index.get(str(user_id), 0)

    def item_index(self, item_id: Any) -> int:
        """Index of `item_id` (0 when unknown)."""
        if not self._item_index:
            self._item_index = {iid: i for i, iid in enumerate(self.item_vocab, start=1)}
        return self._item_index.get(str(item_id), 0)

    def side_features(self, side: str) -> dict[str, np.ndarray]:
        """The raw feature tables of one side ("user" or "item"), keyed by column name
        (`__id__` included)."""
        prefix = f"{side}/"
        return {k[len(prefix):]: v for k, v in self.features.items() if k.startswith(prefix)}

    def interactions(self, split: str) -> sp.csr_matrix:
        """Binary csr matrix [num_users, num_items] of the positives of `split`."""
        frame = getattr(self, split)
        matrix = sp.csr_matrix(
            (np.ones(len(frame), dtype=np.float32),
             (frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy())),
            shape=(self.num_users, self.num_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def train_item_mask(self) -> np.ndarray:
        """Boolean mask [num_items] of items seen in training (the benchmark's candidates)."""
        mask = np.zeros(self.num_items, dtype=bool)
        mask[self.train["item_idx"].to_numpy()] = True
        return mask


def empty_explicit_negatives() -> pd.DataFrame:
    """An explicit-negatives frame with no rows."""
    return pd.DataFrame({"user_idx": np.zeros(0, np.int64), "item_idx": np.zeros(0, np.int64),
                         "split": np.zeros(0, object)})


def explicit_counts(frame: pd.DataFrame | None, dropped: int) -> dict[str, int]:
    """Saved explicit negatives per split, and those dropped as a positive of their user."""
    counts = {} if frame is None else frame["split"].value_counts().to_dict()
    return {**{name: int(counts.get(name, 0)) for name in ("train", "validation", "test")},
            "dropped_as_positive": int(dropped)}


def load_processed(directory: str | Path) -> ProcessedData:
    """Load a processed-data directory; raises FileNotFoundError naming what is missing."""
    directory = Path(directory)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory}: not a processed-data directory (missing {', '.join(missing)}); "
            "run the data stage first (`make run` or DataPreprocessor(config).run())"
        )
    frames = {
        name: pd.read_parquet(directory / f"{name}.parquet")
        for name in ("train", "validation", "test", "negatives")
    }
    vocabularies = read_json(directory / "vocabularies.json")
    with np.load(directory / "features.npz") as archive:
        features = {key: archive[key] for key in archive.files}
    with np.load(directory / "history.npz") as archive:
        shape = tuple(int(v) for v in archive["shape"])
        indices = archive["indices"]
        history = sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, archive["indptr"]), shape=shape
        )
    return ProcessedData(
        directory=directory,
        **frames,
        user_vocab=vocabularies["user_id"],
        item_vocab=vocabularies["item_id"],
        features=features,
        feature_specs=read_json(directory / "feature_specs.json"),
        history=history,
        stats=read_json(directory / "stats.json"),
        fingerprint=(read_json(directory / FINGERPRINT_FILE)
                     if (directory / FINGERPRINT_FILE).is_file() else None),
        explicit_negatives=(pd.read_parquet(directory / EXPLICIT_NEGATIVES_FILE)
                            if (directory / EXPLICIT_NEGATIVES_FILE).is_file()
                            else empty_explicit_negatives()),
    )


def is_processed_for(directory: Path, digest: str) -> bool:
    """True when `directory` holds a finished data stage whose fingerprint is `digest`."""
    path = directory / FINGERPRINT_FILE
    if not ((directory / "stats.json").is_file() and path.is_file()):
        return False
    try:
        return read_json(path).get("digest") == digest
    except ValueError:
        return False
