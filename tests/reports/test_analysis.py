"""The tables behind the notebooks: EDA summaries, preprocessing checks, run context, evaluation
breakdowns and embedding helpers, on a tiny synthetic dataset (no TensorFlow)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from twotower_utils.config import ConfigError
from twotower_utils.data.datasets import load_dataset
from twotower_utils.data.preprocessing import DataPreprocessor
from twotower_utils.data.processed import load_processed
from twotower_utils.evaluation.ranking import ranking_metrics
from twotower_utils.pipeline.runs import FAST_OVERRIDES, start_run
from twotower_utils.reports import analysis, eda
from twotower_utils.reports import embedding_analysis as ea

TINY = {"data.dataset": "synthetic", "data.user_features": None, "data.item_features": None,
        "data.synthetic.num_users": 200, "data.synthetic.num_items": 120,
        "data.synthetic.num_interactions": 4000}


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root):
    root = tmp_path_factory.mktemp("analysis")
    shutil.copy(project_root / "config.json", root / "config.json")
    run = start_run(root / "config.json", TINY, "unit")
    DataPreprocessor(run.config).run()
    return run, load_dataset(run.config), load_processed(run.processed_dir)


def test_start_run_merges_fast_under_overrides_and_names_bad_parameters(project):
    run, _, _ = project
    fast = start_run(run.config_path, {**TINY, "training.epochs": 5}, "fast", fast=True,
                     create=False)
    assert fast.config.training.epochs == 5, "an explicit override beats FAST"
    assert fast.config.model.embedding_dim == FAST_OVERRIDES["model.embedding_dim"]
    assert fast.models_dir.name == "fast" and not fast.reports_dir.exists()
    with pytest.raises(ValueError, match="RUN_ID = '../x'"):
        start_run(run.config_path, TINY, "../x", create=False)
    with pytest.raises(ValueError, match="OVERRIDES = .*expected a dict"):
        start_run(run.config_path, ["training.epochs", 3], create=False)
    with pytest.raises(ConfigError, match="training.epochs = 0"):
        start_run(run.config_path, {**TINY, "training.epochs": 0}, create=False)
    run.record("unit", {"value": 1})
    assert run.results()["unit"] == {"value": 1}


def test_eda_tables_describe_the_raw_data(project):
    _, raw, _ = project
    summary = eda.dataset_summary(raw)
    assert summary.loc["positive interactions", "value"] == f"{len(raw.interactions):,}"
    users, items = eda.activity_counts(raw.interactions)
    assert users.sum() == items.sum() == len(raw.interactions)
    tail = eda.long_tail_table(items)
    assert tail.loc["top 50%", "items"] == round(0.5 * len(items))
    features = eda.feature_summary(raw.items, raw.item_features)
    assert list(features.index) == list(raw.item_features)
    weekly = eda.interactions_per_period(raw.interactions)
    assert weekly.sum() == len(raw.interactions)
    assert eda.interactions_per_period(raw.interactions.drop(columns="timestamp")).empty
    with pytest.raises(ValueError, match=r"features \['nope'\] are not columns"):
        eda.feature_summary(raw.items, {"nope": "numeric"})


def test_preprocessing_checks_pass_and_catch_a_leak(project):
    _, _, data = project
    checks = eda.preprocessing_checks(data)
    assert checks["passed"].all()
    eda.require_passed(checks)
    sizes = eda.split_sizes(data.stats)
    assert sizes["rows"].sum() == data.stats["num_interactions"]
    leaky = load_processed(data.directory)
    leaky.test = pd.concat([leaky.test, leaky.train.head(3)])
    with pytest.raises(AssertionError, match="no test .* pair appears in training: 3 of"):
        eda.require_passed(eda.preprocessing_checks(leaky))
    vocab = eda.vocabulary_summary(data)
    assert vocab.loc[("item", "item_id"), "vocabulary size"] == len(data.item_vocab)


@pytest.fixture(scope="module")
def evaluated(project):
    _, _, data = project
    protocol = analysis.EvalProtocol(data)
    top_lists, seconds, tuning = analysis.baseline_top_lists(data, 10, fast=True)
    return data, protocol, top_lists, tuning


def test_baselines_follow_the_test_protocol(evaluated):
    data, protocol, top_lists, tuning = evaluated
    assert tuning["chosen"].sum() == 1 and set(tuning.index) == set(analysis.EASE_GRID_FAST)
    for top in top_lists.values():
        rows = top[protocol.users]
        assert (rows >= 0).all() and protocol.candidates[rows].all()
        seen = protocol.exclude[protocol.users].toarray()
        assert not np.take_along_axis(seen, rows, axis=1).any(), "training items recommended"
        others = np.setdiff1d(np.arange(data.num_users), protocol.users)
        assert (top[others] == -1).all()
    table = analysis.metric_table(top_lists, protocol.relevant, [5, 10], ["ndcg", "recall"])
    assert list(table.columns) == ["ndcg@5", "ndcg@10", "recall@5", "recall@10"]
    assert table.loc["ease", "ndcg@10"] > table.loc["most_popular", "ndcg@10"]


def test_bucket_breakdowns_partition_users_and_interactions(evaluated):
    data, protocol, top_lists, _ = evaluated
    by_user = analysis.metrics_by_user_bucket(top_lists, protocol.relevant,
                                              analysis.user_activity(data), k=10)
    ease = by_user[by_user["model"] == "ease"]
    assert ease["users"].sum() == len(protocol.users)
    overall = ranking_metrics(top_lists["ease"], protocol.relevant, (10,), ("ndcg",))
    weighted = (ease["ndcg"] * ease["users"]).sum() / ease["users"].sum()
    assert weighted == pytest.approx(overall["ndcg@10"])
    by_item = analysis.recall_by_item_bucket(top_lists, protocol.relevant,
                                             analysis.item_popularity(data), k=10)
    ease = by_item[by_item["model"] == "ease"]
    assert ease["test interactions"].sum() == protocol.relevant.nnz
    assert ease["share of recommendations"].sum() == pytest.approx(1.0)
    wide = analysis.bucket_table(by_item, count_column="test interactions")
    assert ("recall@10", "ease") in wide.columns and len(wide) == len(ease)


def test_example_recommendations_mark_the_hits(evaluated, project):
    data, protocol, top_lists, _ = evaluated
    _, raw, _ = project
    names = analysis.item_names(raw.items, data.item_vocab)
    users = analysis.pick_example_users(protocol.relevant, analysis.user_activity(data))
    table = analysis.example_recommendations(users, top_lists["ease"], data.test, names,
                                             data.user_vocab)
    first = users[0]
    liked = set(data.test.loc[data.test["user_idx"] == first, "item_idx"])
    rows = table[table.index.get_level_values("user").str.startswith(
        f"user {data.user_vocab[first - 1]} ")]
    expected = ["✓" if i in liked else "" for i in top_lists["ease"][first, :10]]
    assert list(rows["hit"]) == expected
    api = pd.DataFrame({"item_id": data.item_vocab[:2], "score": [1.0, 0.5], "rank": [1, 2]})
    named = analysis.add_item_names(api, raw.items.assign(title=raw.items["item_id"] + "!"))
    assert list(named.columns) == ["item_id", "title", "score", "rank"]
    assert named["title"].tolist() == [f"{i}!" for i in data.item_vocab[:2]]


def test_embedding_helpers(project):
    _, raw, data = project
    rng = np.random.default_rng(0)
    items = rng.normal(size=(data.num_items, 8))
    users = rng.normal(size=(data.num_users, 8))
    name, labels = ea.primary_label(raw.items, raw.item_features, data.item_vocab)
    assert name == "category" and labels[0] == "unknown" and len(labels) == data.num_items
    candidates = np.ones(data.num_items, bool)
    candidates[0] = False
    neighbours = ea.nearest_items(items, [1, 2], analysis.item_names(raw.items, data.item_vocab),
                                  candidates, k=3)
    assert len(neighbours) == 6 and (neighbours["cosine"] <= 1 + 1e-9).all()
    assert data.item_vocab[0] not in set(neighbours.loc[data.item_vocab[0], "neighbour"])
    for method in ("pca", "tsne"):
        assert ea.project_2d(items[1:40], method).shape == (39, 2)
    with pytest.raises(ValueError, match="method = 'mds'"):
        ea.project_2d(items, "mds")
    popularity = analysis.item_popularity(data)
    shown = ea.plot_sample(candidates, popularity, max_points=10)
    assert len(shown) == 10 and popularity[shown].min() >= np.sort(popularity[1:])[-10]
    positive, negative = ea.score_samples(users, items, data, max_pairs=50)
    assert len(positive) == 50 and len(negative) == 50
    assert ea.auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
