"""Tests for twotower_utils.evaluation.metrics (metrics, top-k, baselines, comparison)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from twotower_utils.evaluation.metrics import (
    EASE,
    METRICS,
    MostPopular,
    PopularityByFeature,
    catalog_coverage,
    compare_models,
    evaluate_recommendations,
    hit_rate_at_k,
    map_at_k,
    mean_average_precision,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    recommendations_frame,
    top_k_from_scores,
    top_k_scores,
    tune_ease,
)

# --- a hand-computed case, k = 3 -------------------------------------------------------------
# user 1: relevant {1, 2, 3, 9} (more than k); top 3 = 1 (hit), 5, 2 (hit); item 3 is 4th.
# user 2: relevant {4}; items 6 and 4 tie, 6 comes first in the input so 4 is ranked 2nd.
# user 3: relevant {8, 9}; only two predictions, no hit.
# user 4: relevant {1} but no predictions: left out of the averages.
# user 5: predictions but nothing relevant: left out of the averages, counted for coverage.
TRUE = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 3, 3, 4], "item_id": [1, 2, 3, 9, 4, 8, 9, 1]})
PRED = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 2, 2, 2, 3, 3, 5],
        "item_id": [3, 1, 5, 2, 6, 4, 7, 1, 2, 1],
        "score": [0.1, 0.9, 0.8, 0.7, 0.5, 0.5, 0.4, 0.3, 0.2, 1.0],
    }
)
L2_3 = 1.0 / math.log2(3)
IDCG_3 = 1.0 + L2_3 + 0.5
EXPECTED_AT_3 = {
    "precision": (2 / 3 + 1 / 3 + 0) / 3,
    "recall": (2 / 4 + 1 / 1 + 0) / 3,
    "ndcg": ((1.0 + 0.5) / IDCG_3 + L2_3 / 1.0 + 0) / 3,
    "map": ((1 + 2 / 3) / 4 + (1 / 2) / 1 + 0) / 3,
    "map_at_k": ((1 + 2 / 3) / 3 + (1 / 2) / 1 + 0) / 3,
    "hit_rate": 2 / 3,
    "coverage": 6 / 10,  # {1, 5, 2} | {6, 4, 7} | {1, 2} | {1}
}
EXPECTED_AT_1 = {
    "precision": 1 / 3,
    "recall": (1 / 4) / 3,
    "ndcg": 1 / 3,
    "map": (1 / 4) / 3,
    "map_at_k": 1 / 3,
    "hit_rate": 1 / 3,
    "coverage": 2 / 10,  # {1, 6}
}
# The same case as arrays: row = user index (0..5), -1 = empty slot; row 4 has no list.
TOP_IDX = np.array([[-1, -1, -1], [1, 5, 2], [6, 4, 7], [1, 2, -1], [-1, -1, -1], [1, -1, -1]])
RELEVANT = sp.csr_matrix((np.ones(len(TRUE)), (TRUE["user_id"], TRUE["item_id"])), shape=(6, 10))

DF_FUNCTIONS = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": mean_average_precision,
    "map_at_k": map_at_k,
    "hit_rate": hit_rate_at_k,
}


@pytest.mark.parametrize("metric", list(DF_FUNCTIONS))
@pytest.mark.parametrize("k, expected", [(3, EXPECTED_AT_3), (1, EXPECTED_AT_1)])
def test_dataframe_metrics_hand_computed(metric, k, expected):
    assert DF_FUNCTIONS[metric](TRUE, PRED, k=k) == pytest.approx(expected[metric])


def test_coverage_and_evaluate_recommendations_hand_computed():
    assert catalog_coverage(TRUE, PRED, k=3, num_items=10) == pytest.approx(0.6)
    # Default catalogue: the items seen in either frame, {1..9}.
    assert catalog_coverage(TRUE, PRED, k=3) == pytest.approx(6 / 9)
    got = evaluate_recommendations(TRUE, PRED, k_values=(1, 3), num_items=10)
    assert list(got) == [f"{m}@{k}" for m in METRICS for k in (1, 3)]
    for m in METRICS:
        assert got[f"{m}@3"] == pytest.approx(EXPECTED_AT_3[m]), m
        assert got[f"{m}@1"] == pytest.approx(EXPECTED_AT_1[m]), m


def test_ranking_metrics_hand_computed_matches_dataframe_path():
    got = ranking_metrics(TOP_IDX, RELEVANT, k_values=(1, 3), num_items=10)
    for m in METRICS:
        assert got[f"{m}@3"] == pytest.approx(EXPECTED_AT_3[m]), m
        assert got[f"{m}@1"] == pytest.approx(EXPECTED_AT_1[m]), m


def test_metric_options_and_edge_cases():
    cols = {"col_user": "u", "col_item": "i", "col_prediction": "p"}
    true = TRUE.rename(columns={"user_id": "u", "item_id": "i"})
    pred = PRED.rename(columns={"user_id": "u", "item_id": "i", "score": "p"})
    assert ndcg_at_k(true, pred, k=3, **cols) == pytest.approx(EXPECTED_AT_3["ndcg"])
    # relevancy_method=None takes each user's rows as an already ordered list.
    ordered = PRED.sort_values(["user_id", "score"], ascending=[True, False], kind="stable")
    listed = ordered.groupby("user_id").head(3).assign(score=0.0)
    assert recall_at_k(TRUE, listed, k=3, relevancy_method=None) == pytest.approx(0.5)
    # Duplicate ground-truth rows count once.
    doubled = pd.concat([TRUE, TRUE])
    assert recall_at_k(doubled, PRED, k=3) == pytest.approx(EXPECTED_AT_3["recall"])
    # No common users: 0.0, as MS returns.
    assert precision_at_k(TRUE, PRED.assign(user_id=PRED["user_id"] + 100), k=3) == 0.0
    assert ranking_metrics(np.full((6, 3), -1), RELEVANT, (3,))["ndcg@3"] == 0.0
    with pytest.raises(ValueError, match="ids would never match"):
        ndcg_at_k(TRUE.astype({"item_id": str}), PRED)
    with pytest.raises(ValueError, match="lacks column"):
        ndcg_at_k(TRUE, PRED.drop(columns="score"))
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        evaluate_recommendations(TRUE, PRED, metrics=("auc",))
    with pytest.raises(ValueError, match="only 3 columns"):
        ranking_metrics(TOP_IDX, RELEVANT, k_values=(5,))


def test_by_threshold_counts_hits_past_k_as_ms_does():
    # MS "by_threshold" lists `threshold` items and scores them all against k: user 1's
    # two hits in its top 3 both count at k = 1 (precision 2), user 2's one, user 3 none.
    assert precision_at_k(TRUE, PRED, k=1, relevancy_method="by_threshold",
                          threshold=3) == pytest.approx(1.0)
    assert recall_at_k(TRUE, PRED, k=1, relevancy_method="by_threshold",
                       threshold=3) == pytest.approx((2 / 4 + 1) / 3)
    assert catalog_coverage(TRUE, PRED, k=1, num_items=10, relevancy_method="by_threshold",
                            threshold=3) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="relevancy_method"):
        recall_at_k(TRUE, PRED, relevancy_method="nope")


def test_dataframe_path_is_the_array_path_on_the_same_lists():
    # The DataFrame functions turn the frames into a top-k matrix and score it with
    # ranking_metrics: same numbers, exactly, for the users in both frames.
    via_frames = evaluate_recommendations(TRUE, PRED, k_values=(1, 3), num_items=10)
    assert via_frames == ranking_metrics(TOP_IDX, RELEVANT, k_values=(1, 3), num_items=10)


# --- brute-force reference -------------------------------------------------------------------


def reference_top_k(scores, k, exclude_sets, candidates):
    """Per user: allowed items sorted by (-score, item), first k."""
    out = []
    for u, row in enumerate(scores):
        allowed = [i for i in range(len(row)) if candidates[i] and i not in exclude_sets[u]]
        out.append(sorted(allowed, key=lambda i, row=row: (-row[i], i))[:k])
    return out


def reference_metrics(lists, relevant_sets, k, num_items):
    """Pure-Python per-user loop over the metric definitions."""
    sums = dict.fromkeys(("precision", "recall", "ndcg", "map", "map_at_k", "hit_rate"), 0.0)
    users = [u for u, rel in enumerate(relevant_sets) if rel and lists[u]]
    for u in users:
        rel, hits, dcg, ap = relevant_sets[u], 0, 0.0, 0.0
        for rank, item in enumerate(lists[u][:k], start=1):
            if item in rel:
                hits += 1
                dcg += 1 / math.log2(rank + 1)
                ap += hits / rank
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(k, len(rel)) + 1))
        sums["precision"] += hits / k
        sums["recall"] += hits / len(rel)
        sums["ndcg"] += dcg / idcg
        sums["map"] += ap / len(rel)
        sums["map_at_k"] += ap / min(k, len(rel))
        sums["hit_rate"] += hits > 0
    result = {m: (v / len(users) if users else 0.0) for m, v in sums.items()}
    result["coverage"] = len({i for lst in lists for i in lst[:k]}) / num_items
    return result


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(7)
    n_users, n_items, dim = 70, 40, 4
    users = rng.integers(-2, 3, size=(n_users, dim)).astype(np.float32)
    items = rng.integers(-2, 3, size=(n_items, dim)).astype(np.float32)  # many exact ties
    train = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr")
    test = sp.random(n_users, n_items, density=0.1, random_state=2, format="csr")
    test = test - test.multiply(train != 0)  # MS-style: test items are not training items
    test = sp.diags((np.arange(n_users) >= 2).astype(float)) @ test  # users 0, 1: no test items
    test.eliminate_zeros()
    candidates = rng.random(n_items) > 0.15
    candidates[0] = False
    train_sets = [set(train[u].indices) for u in range(n_users)]
    test_sets = [set(test[u].indices) for u in range(n_users)]
    return users, items, train, test, candidates, train_sets, test_sets


@pytest.mark.parametrize("k", [1, 5, 12])
def test_vectorised_paths_match_brute_force(random_case, k):
    users, items, train, test, candidates, train_sets, test_sets = random_case
    scores = users @ items.T
    expected_lists = reference_top_k(scores, k, train_sets, candidates)
    top_idx, top_scores = top_k_scores(users, items, k, exclude=train, candidates=candidates)
    assert top_idx.dtype == np.int32 and top_scores.dtype == np.float32
    assert [[i for i in row if i >= 0] for row in top_idx.tolist()] == expected_lists

    num = int(candidates.sum())
    expected = reference_metrics(expected_lists, test_sets, k, num)
    via_arrays = ranking_metrics(top_idx, test, (k,), num_items=num)
    for m in METRICS:
        assert via_arrays[f"{m}@{k}"] == pytest.approx(expected[m]), m
    # Users 3 and 4 absent from the recommendations: left out, not counted as misses.
    absent = top_idx.copy()
    absent[[3, 4]] = -1
    lists = [[] if u in (3, 4) else row for u, row in enumerate(expected_lists)]
    expected_absent = reference_metrics(lists, test_sets, k, num)
    assert ranking_metrics(absent, test, (k,), num_items=num) == pytest.approx(
        {f"{m}@{k}": v for m, v in expected_absent.items()}
    )

    # The DataFrame path on every allowed (user, item) score, listed by item index so that
    # input order breaks ties as top_k_scores does: same numbers.
    u_idx, i_idx = np.nonzero(np.ones_like(scores, dtype=bool))
    allowed = candidates[i_idx] & ~np.asarray((train != 0).todense()).ravel()
    full = pd.DataFrame({"user_id": u_idx, "item_id": i_idx, "score": scores.ravel()})[allowed]
    coo = test.tocoo()
    truth = pd.DataFrame({"user_id": coo.row, "item_id": coo.col})
    via_frames = evaluate_recommendations(truth, full, (k,), num_items=num)
    via_listed = evaluate_recommendations(
        truth, recommendations_frame(top_idx, top_scores), (k,), num_items=num
    )
    for m in METRICS:
        assert via_frames[f"{m}@{k}"] == pytest.approx(expected[m]), m
        assert via_listed[f"{m}@{k}"] == pytest.approx(expected[m]), m


def test_independent_scorer_of_recommendation_csvs_agrees(random_case, tmp_path):
    """benchmarks/score_recommendations.py (plain loops, stdlib only) scores the written
    CSVs exactly as evaluate_recommendations scores the frames."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "score_recommendations.py"
    spec = importlib.util.spec_from_file_location("score_recommendations", path)
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    users, items, train, test, candidates, _, _ = random_case
    top_idx, top_scores = top_k_scores(users, items, 10, exclude=train, candidates=candidates)
    recs = recommendations_frame(top_idx, top_scores)
    recs[["user_id", "item_id", "rank"]].to_csv(tmp_path / "recs.csv", index=False)
    coo = test.tocoo()
    truth = pd.DataFrame({"user_id": coo.row, "item_id": coo.col})
    truth.to_csv(tmp_path / "test.csv", index=False)
    independent = scorer.score(scorer.read_pairs(str(tmp_path / "recs.csv"), True),
                               scorer.read_pairs(str(tmp_path / "test.csv"), False), k=10)
    ours = evaluate_recommendations(truth, recs, (10,), metrics=("precision", "recall", "ndcg",
                                                                  "map", "map_at_k", "hit_rate"))
    assert independent == pytest.approx({
        "precision@10": ours["precision@10"], "recall@10": ours["recall@10"],
        "ndcg@10": ours["ndcg@10"], "map": ours["map@10"], "map@10": ours["map_at_k@10"],
        "hit_rate@10": ours["hit_rate@10"]})


# --- top-k -----------------------------------------------------------------------------------


def test_top_k_chunking_does_not_change_the_answer(random_case):
    users, items, train, _, candidates, _, _ = random_case
    one = top_k_scores(users, items, 7, exclude=train, candidates=candidates, chunk_size=1)
    many = top_k_scores(users, items, 7, exclude=train, candidates=candidates, chunk_size=1000)
    some = top_k_scores(users, items, 7, exclude=train, candidates=candidates, chunk_size=9)
    for a, b in ((one, many), (one, some)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_top_k_excludes_training_items_and_respects_candidates(random_case):
    users, items, train, _, candidates, train_sets, _ = random_case
    top_idx, _ = top_k_scores(users, items, 10, exclude=train, candidates=candidates)
    for u, row in enumerate(top_idx.tolist()):
        shown = [i for i in row if i >= 0]
        assert not set(shown) & train_sets[u]
        assert all(candidates[i] for i in shown)


def test_top_k_ties_and_short_lists():
    def score_fn(users):
        return np.array([[5, 3, 3, 3, 1], [2, 2, 2, 2, 2]])[users]  # integer scores

    top_idx, top_scores = top_k_from_scores(score_fn, 2, 2)
    np.testing.assert_array_equal(top_idx, [[0, 1], [0, 1]])  # lower index wins a tie
    np.testing.assert_array_equal(top_scores, [[5, 3], [2, 2]])
    # Only two allowed items for user 0 and one for user 1: the rest is -1 / -inf.
    exclude = sp.csr_matrix(np.array([[1, 0, 1, 0, 1], [1, 1, 1, 0, 1]]))
    top_idx, top_scores = top_k_from_scores(score_fn, 2, 7, exclude=exclude, chunk_size=1)
    np.testing.assert_array_equal(top_idx, [[1, 3, -1, -1, -1, -1, -1], [3] + [-1] * 6])
    assert np.isneginf(top_scores[:, 2:]).all() and top_scores[0, 0] == 3
    with pytest.raises(ValueError, match="exclude has 1 rows"):
        top_k_from_scores(score_fn, 2, 2, exclude=exclude[:1])
    with pytest.raises(ValueError, match="embedding sizes differ"):
        top_k_scores(np.ones((2, 3)), np.ones((4, 2)), 2)


# --- baselines and tables --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_train():
    return sp.random(50, 30, density=0.15, random_state=3, format="csr")


def test_most_popular_counts_users_and_excludes_seen(small_train):
    model = MostPopular().fit(small_train)
    counts = np.asarray((small_train != 0).sum(axis=0)).ravel()
    np.testing.assert_array_equal(model.scores(np.array([0, 4])), np.vstack([counts, counts]))
    top_idx, _ = top_k_from_scores(model.scores, 50, 3, exclude=small_train)
    assert all(not set(row) & set(small_train[u].indices) for u, row in enumerate(top_idx))


def test_popularity_by_feature_hand_computed():
    # Training users per item: item 1 has 3, item 2 has 1, item 3 has 4; item 4 is cold.
    train = sp.csr_matrix(np.array([[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 0, 1, 0],
                                    [0, 0, 0, 1, 0]]))
    # Raw values, as the data stage stores them ("" = missing; item 0 is the OOV row).
    features = {"genres": np.array(["", "g1|g2", "g2", " g3", "g2|g3|"]),
                "kind": np.array(["", "k1", "k1", "k2", ""]),
                "year": np.array([np.nan, 1.0, 2.0, 3.0, 4.0])}
    specs = [{"name": "genres", "type": "multi_hot"}, {"name": "kind", "type": "categorical"},
             {"name": "year", "type": "numeric"}]
    model = PopularityByFeature().fit(train, features, specs)
    # genre 1 -> 3, genre 2 -> (3 + 1) / 2, genre 3 -> 4; kind 1 -> 2, kind 2 -> 4.
    expected = [8 / 3,  # nothing known: the mean training popularity
                (2.5 + 2) / 2, (2 + 2) / 2, (4 + 4) / 2,
                (2 + 4) / 2]  # cold item: its genres only (its kind is unknown)
    np.testing.assert_allclose(model.scores_, expected)
    assert model.scores(np.array([0, 3])).shape == (2, 5)


def test_ease_closed_form(small_train):
    model = EASE(l2=5.0).fit(small_train)
    x = (small_train != 0).astype(float).toarray()
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(30))
    b = np.eye(30) - p @ np.diag(1 / np.diag(p))
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights_, b, atol=1e-10)
    np.testing.assert_allclose(np.diag(model.weights_), 0.0)
    np.testing.assert_allclose(model.scores(np.array([3, 7])), x[[3, 7]] @ b, atol=1e-10)
    with pytest.raises(ValueError, match="positive"):
        EASE(l2=0)


def test_tune_ease_picks_the_best_row(small_train):
    validation = sp.random(50, 30, density=0.05, random_state=4, format="csr")
    best, table = tune_ease(small_train, validation, grid=(1.0, 10.0, 100.0), k=5)
    assert list(table["l2"]) == [1.0, 10.0, 100.0]
    assert {"ndcg@5", "map@5", "fit_seconds"} <= set(table.columns)
    assert best == table.loc[table["ndcg@5"].idxmax(), "l2"]


def test_compare_models_table():
    table = compare_models(
        {"pop": {"ndcg@10": 0.25, "map@10": 0.05}, "ease": {"ndcg@10": 0.48, "recall@10": 0.2}},
        {"ease": 0.3},
    )
    assert list(table.index) == ["pop", "ease"] and table.index.name == "model"
    assert list(table.columns) == ["ndcg@10", "map@10", "recall@10", "fit_seconds"]
    assert np.isnan(table.loc["pop", "fit_seconds"]) and table.loc["ease", "fit_seconds"] == 0.3
    assert np.isnan(table.loc["ease", "map@10"])


# --- MovieLens-100K --------------------------------------------------------------------------


@pytest.mark.movielens
def test_ml100k_baselines_match_published(ml100k_dir, tmp_path):
    from twotower_utils.config import load_config
    from twotower_utils.data.preprocessing import DataPreprocessor, load_processed

    config = load_config(Path(__file__).resolve().parents[2] / "config.json", {
        "data.ml100k_dir": str(ml100k_dir),
        "paths.raw_dir": str(tmp_path / "raw"),
        "paths.processed_dir": str(tmp_path / "processed"),
    })
    data = load_processed(DataPreprocessor(config).run())
    train = data.interactions("train") + data.interactions("validation")
    test = data.interactions("test")
    assert test.nnz == 24_934
    candidates = np.asarray(train.sum(axis=0)).ravel() > 0

    def ndcg(model):
        top, _ = top_k_from_scores(model.fit(train).scores, train.shape[0], 10, train, candidates)
        return ranking_metrics(top, test, (10,))["ndcg@10"]

    assert ndcg(MostPopular()) == pytest.approx(0.252, abs=0.01)
    assert ndcg(EASE(l2=300.0)) == pytest.approx(0.481, abs=0.01)  # l2 as tuned on validation
