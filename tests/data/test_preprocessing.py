"""DataPreprocessor end to end: the benchmark split, the other splits, negatives, saving."""

import hashlib

import numpy as np
import pytest

from twotower_utils.config import load_config
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed, main

BENCHMARK_TEST_SHA256 = "9b61a6eb327679bc99757406052bda03ca5d74e8cf191351ef628c8a042047d5"


def _synthetic_config(project_root, tmp_path, **overrides):
    base = {
        "data.dataset": "synthetic",
        "data.user_features": None,
        "data.item_features": None,
        "data.synthetic": {"num_users": 120, "num_items": 80, "num_interactions": 3000,
                           "num_clusters": 4, "seed": 3},
        "data.split.method": "random",
        "data.split.train_ratio": 0.8,
        "paths.raw_dir": str(tmp_path / "raw"),
        "paths.processed_dir": str(tmp_path / "processed"),
    }
    base.update(overrides)
    return load_config(project_root / "config.json", base)


@pytest.fixture()
def synthetic(project_root, tmp_path):
    preprocessor = DataPreprocessor(_synthetic_config(project_root, tmp_path))
    directory = preprocessor.run()
    return preprocessor, load_processed(directory)


@pytest.mark.movielens
def test_benchmark_split_on_movielens_is_the_reference_protocol(project_root, tmp_path,
                                                                 ml100k_dir):
    config = load_config(project_root / "config.json", {
        "data.ml100k_dir": str(ml100k_dir),
        "paths.raw_dir": str(tmp_path / "raw"),
        "paths.processed_dir": str(tmp_path / "processed"),
    })
    data = load_processed(DataPreprocessor(config).run())
    assert len(data.test) == 24_934
    assert len(data.train) + len(data.validation) == 75_066
    lines = sorted(f"{u}\t{i}" for u, i in zip(data.test["user_id"], data.test["item_id"]))
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == BENCHMARK_TEST_SHA256
    assert data.stats["num_users"] == 943 and data.stats["num_items"] == 1682
    assert {"user/age", "user/gender", "user/occupation", "user/zip_prefix",
            "item/release_year", "item/genres"} <= set(data.features)


def test_splits_partition_positives_and_validation_comes_from_training(synthetic):
    preprocessor, data = synthetic
    pairs = {name: set(zip(getattr(data, name)["user_id"], getattr(data, name)["item_id"]))
             for name in ("train", "validation", "test")}
    total = len(data.train) + len(data.validation) + len(data.test)
    assert total == len(preprocessor.positives)
    # the synthetic data holds each (user, item) pair once, so splits cannot share a pair
    assert pairs["test"].isdisjoint(pairs["train"])
    assert pairs["test"].isdisjoint(pairs["validation"])
    assert pairs["validation"].isdisjoint(pairs["train"])
    assert 0.06 < len(data.validation) / total < 0.10  # 10% of the 80% training part


def test_indices_vocabularies_and_oov_slot(synthetic):
    _, data = synthetic
    assert data.user_vocab[0] != "" and data.num_users == len(data.user_vocab) + 1
    row = data.train.iloc[0]
    assert data.user_vocab[row["user_idx"] - 1] == row["user_id"]
    assert data.item_index(row["item_id"]) == row["item_idx"]
    assert data.item_index("never-seen") == 0
    for side in ("user", "item"):
        for name, table in data.side_features(side).items():
            assert len(table) == getattr(data, f"num_{side}s"), name
    # the history is exactly the training positives
    assert data.history.nnz == len(set(zip(data.train["user_idx"], data.train["item_idx"])))
    assert (data.interactions("train") != data.history).nnz == 0


def test_negatives_are_saved_per_positive_and_exclude_training_positives(synthetic):
    preprocessor, data = synthetic
    assert len(data.negatives) == preprocessor.config.data.num_negatives * len(data.train)
    positives = set(zip(data.train["user_idx"], data.train["item_idx"]))
    assert not any(pair in positives for pair in zip(data.negatives["user_idx"],
                                                     data.negatives["item_idx"]))
    np.testing.assert_array_equal(
        np.asarray(data.item_vocab, dtype=object)[data.negatives["item_idx"] - 1],
        data.negatives["item_id"].to_numpy(dtype=object))


def test_cold_items_split_marks_test_items_unseen_in_training(project_root, tmp_path):
    config = _synthetic_config(project_root, tmp_path, **{"data.split.method": "cold_items"})
    data = load_processed(DataPreprocessor(config).run())
    assert set(data.test["item_id"]).isdisjoint(data.train["item_id"])
    cold = data.test["item_idx"].to_numpy()
    assert (data.features["item/__id__"][cold] == 0).all()  # id embedding falls back to OOV
    assert data.stats["splits"]["test"]["cold_items"] == len(data.test)


def test_stats_report_counts_sparsity_and_split_sizes(synthetic):
    _, data = synthetic
    stats = data.stats
    assert stats["splits"]["test"]["rows"] == len(data.test)
    assert 0.0 < stats["sparsity"] < 1.0
    assert stats["num_interactions"] == sum(s["rows"] for s in stats["splits"].values())


def test_a_failed_save_leaves_the_previous_processed_data_intact(synthetic, monkeypatch):
    preprocessor, before = synthetic
    directory = before.directory
    snapshot = {p.name: p.read_bytes() for p in directory.iterdir()}

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("twotower_utils.data.preprocessing.np.savez", broken_savez)
    preprocessor.config = preprocessor.config.with_overrides({"data.split.seed": 99})
    preprocessor.split_data()
    preprocessor.generate_negatives()
    with pytest.raises(OSError, match="disk full"):
        preprocessor.save_processed_data()
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == snapshot
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]


def test_loading_a_directory_that_is_not_processed_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing train.parquet"):
        load_processed(tmp_path)


def test_cli_runs_the_data_stage_and_prints_a_summary(project_root, tmp_path, capsys):
    args = ["--config", str(project_root / "config.json"), "--dataset", "synthetic",
            "-p", "data.user_features", "null", "-p", "data.item_features", "null",
            "-p", "data.synthetic.num_interactions", "2000",
            "-p", "data.split.method", "random", "-p", "data.split.train_ratio", "0.8",
            "-p", "paths.raw_dir", str(tmp_path / "raw"),
            "-p", "paths.processed_dir", str(tmp_path / "processed")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "split 'random'" in out and "written to" in out
    assert "input hygiene: 0 duplicate row(s) of 0 pair(s) removed" in out
    assert len(list((tmp_path / "processed").glob("synthetic-*/stats.json"))) == 1
