"""Split functions and negative sampling on small hand-made data (the feature encoding is
tested with the towers' layers, tests/model/test_encoding.py)."""

import numpy as np
import pandas as pd
import pytest

from twotower_utils.data.sampling import (
    item_sampling_probabilities,
    sample_negatives,
    sorted_unique,
)
from twotower_utils.data.splits import split_mask
from twotower_utils.io import atomic_directory, read_json, write_json

# ----------------------------------------------------------------- splits


@pytest.fixture()
def interactions():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 2000)
    return pd.DataFrame({
        "user_id": users.astype(str),
        "item_id": rng.integers(0, 80, 2000).astype(str),
        "timestamp": rng.integers(0, 10_000, 2000),
    })


def test_benchmark_split_takes_round_share_of_each_item(interactions):
    train = split_mask(interactions, "benchmark", 0.75, 42)
    counts = interactions.groupby("item_id").size()
    train_counts = interactions[train].groupby("item_id").size().reindex(counts.index, fill_value=0)
    np.testing.assert_array_equal(train_counts.to_numpy(), np.round(0.75 * counts.to_numpy()))
    assert not np.array_equal(train, split_mask(interactions, "benchmark", 0.75, 43))


def test_random_split_is_per_user_and_deterministic(interactions):
    train = split_mask(interactions, "random", 0.8, 1)
    np.testing.assert_array_equal(train, split_mask(interactions, "random", 0.8, 1))
    counts = interactions.groupby("user_id").size()
    train_counts = interactions[train].groupby("user_id").size().reindex(counts.index)
    np.testing.assert_array_equal(train_counts.to_numpy(), np.round(0.8 * counts.to_numpy()))


def test_temporal_split_trains_on_each_users_past(interactions):
    train = split_mask(interactions, "temporal", 0.7, 0)
    last_train = interactions[train].groupby("user_id")["timestamp"].max()
    first_test = interactions[~train].groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()


def test_leave_last_out_holds_out_each_users_latest_row(interactions):
    train = split_mask(interactions, "leave_last_out", 0.0, 0)
    test = interactions[~train]
    assert test["user_id"].is_unique
    latest = interactions.groupby("user_id")["timestamp"].max()
    assert (test.set_index("user_id")["timestamp"] == latest.reindex(test["user_id"])).all()


def test_cold_items_split_never_trains_on_test_items(interactions):
    train = split_mask(interactions, "cold_items", 0.8, 3)
    assert set(interactions[train]["item_id"]).isdisjoint(interactions[~train]["item_id"])
    assert 0 < (~train).sum() < len(train)


def test_time_based_split_without_timestamps_names_the_column(interactions):
    with pytest.raises(ValueError, match="needs a 'timestamp' column"):
        split_mask(interactions.drop(columns="timestamp"), "temporal", 0.7, 0)
    with pytest.raises(ValueError, match="data.split.method = 'weekly'"):
        split_mask(interactions, "weekly", 0.7, 0)


@pytest.mark.parametrize("method", ["benchmark", "random", "temporal", "leave_last_out",
                                    "cold_items"])
def test_integer_indices_give_the_same_split_as_the_id_strings(interactions, method):
    # The preprocessor's frames carry user_idx/item_idx; the splits group by those instead
    # of hashing the strings, and must not change a single row (the benchmark protocol).
    rng = np.random.default_rng(5)
    user_map = {u: i for i, u in enumerate(rng.permutation(sorted(set(interactions.user_id))),
                                           start=1)}
    item_map = {v: i for i, v in enumerate(rng.permutation(sorted(set(interactions.item_id))),
                                           start=1)}
    indexed = interactions.assign(user_idx=interactions["user_id"].map(user_map),
                                  item_idx=interactions["item_id"].map(item_map))
    np.testing.assert_array_equal(split_mask(indexed, method, 0.75, 42),
                                  split_mask(interactions, method, 0.75, 42))


# ----------------------------------------------------------------- negatives


def test_sorted_unique_matches_numpy():
    keys = np.random.default_rng(0).integers(0, 500, 3000)
    np.testing.assert_array_equal(sorted_unique(keys), np.unique(keys))
    assert sorted_unique(np.array([], dtype=np.int64)).size == 0
    np.testing.assert_array_equal(sorted_unique(np.array([7])), [7])


def test_negatives_never_hit_a_users_positives_and_are_seeded():
    rng = np.random.default_rng(1)
    users = rng.integers(1, 20, 400)
    items = rng.integers(1, 40, 400)  # ~40% of first draws collide and are redrawn
    queries = np.repeat(users, 4)
    _, negatives = sample_negatives(queries, users, items, num_items=41, seed=5)
    positives = set(zip(users.tolist(), items.tolist()))
    assert not any((u, i) in positives for u, i in zip(queries.tolist(), negatives.tolist()))
    assert (negatives > 0).all()
    _, again = sample_negatives(queries, users, items, num_items=41, seed=5)
    np.testing.assert_array_equal(negatives, again)


def test_popularity_sampling_follows_count_to_the_alpha():
    positive_items = np.array([1] * 90 + [2] * 10)
    probabilities = item_sampling_probabilities(positive_items, 4, "popularity", 0.5)
    np.testing.assert_allclose(probabilities, [0, 0.75, 0.25, 0])  # sqrt(90):sqrt(10) = 3:1
    uniform = item_sampling_probabilities(positive_items, 4, "uniform", 0.5)
    np.testing.assert_allclose(uniform, [0, 0.5, 0.5, 0])


def test_a_user_with_every_item_cannot_get_negatives():
    users = np.array([1, 1, 1])
    items = np.array([1, 2, 3])
    with pytest.raises(ValueError, match=r"user index\(es\) \[1\]"):
        sample_negatives(users, users, items, num_items=4)


# ----------------------------------------------------------------- atomic writes


def test_atomic_directory_keeps_the_previous_version_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left behind


def test_write_json_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    target = write_json(tmp_path / "metrics.json", {"ndcg@10": 0.5})
    assert oct(target.stat().st_mode & 0o077) == oct(0o666 & ~_umask() & 0o077)

    def disk_full(src, dst):  # the rename fails after the new text was written
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"ndcg@10": 0.6})
    monkeypatch.undo()
    assert read_json(target) == {"ndcg@10": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no partial file left


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current
