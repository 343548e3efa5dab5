"""Tests for twotower_utils.evaluation.baselines: EASE in its dual and primal forms against
the direct closed form, item-kNN on a hand-checked case, and the choice between them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from log_capture import captured_log

from twotower_utils.evaluation.baselines import (
    EASE,
    ItemKNN,
    cosine_neighbours,
    similarity_baseline,
    tune_ease,
    tune_item_knn,
)
from twotower_utils.evaluation.ranking import ranking_metrics
from twotower_utils.evaluation.topk import top_k_from_scores
from twotower_utils.reports import analysis

GRID = (0.5, 5.0, 50.0, 500.0)
# Both shapes: fewer users than items (the dual, users x users form) and more (the primal).
SHAPES = {"dual": (40, 70), "primal": (70, 40)}


def _data(shape, seed):
    """Random interactions with some structure (two taste blocks) and a validation split."""
    rng = np.random.default_rng(seed)
    users, items = shape
    taste = (np.arange(users)[:, None] % 2) == (np.arange(items)[None, :] % 2)
    dense = rng.random(shape) < np.where(taste, 0.3, 0.05)
    held_out = dense & (rng.random(shape) < 0.2)
    return sp.csr_matrix((dense & ~held_out).astype(float)), sp.csr_matrix(held_out.astype(float))


def _direct_ease(train, l2):
    """The textbook closed form: B = I - P diag(1/diag(P)), P = (XᵀX + l2·I)⁻¹, diag(B) = 0."""
    x = (train != 0).astype(float).toarray()
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))
    np.fill_diagonal(b, 0.0)
    return b, x @ b


@pytest.mark.parametrize("form", SHAPES)
def test_ease_matches_the_direct_closed_form(form):
    train, _ = _data(SHAPES[form], seed=1)
    for l2 in GRID:
        b, scores = _direct_ease(train, l2)
        model = EASE(l2=l2).fit(train)
        assert model._scorer.dual == (form == "dual")
        users = np.arange(train.shape[0])
        np.testing.assert_allclose(model.scores(users), scores, atol=1e-10)
        np.testing.assert_allclose(model.weights_, b, atol=1e-10)
        np.testing.assert_allclose(np.diag(model.weights_), 0.0)


@pytest.mark.parametrize("form", SHAPES)
def test_tune_ease_matches_a_direct_grid_search(form):
    train, validation = _data(SHAPES[form], seed=2)
    candidates = np.asarray(train.sum(axis=0)).ravel() > 0
    best, table = tune_ease(train, validation, GRID, k=5)
    assert table.attrs["form"] == form
    direct = []
    for l2 in GRID:
        scores = _direct_ease(train, l2)[1]
        top, _ = top_k_from_scores(lambda u, s=scores: s[u], train.shape[0], 5, exclude=train,
                                   candidates=candidates)
        direct.append({"l2": l2, **ranking_metrics(top, validation, (5,),
                                                   num_items=int(candidates.sum()))})
    direct = pd.DataFrame(direct)
    assert direct["ndcg@5"].nunique() > 1, "the grid must matter for the test to mean much"
    pd.testing.assert_frame_equal(table[direct.columns], direct, rtol=1e-12)
    assert best == direct.loc[direct["ndcg@5"].idxmax(), "l2"]


# --- item-kNN --------------------------------------------------------------------------------
# users x items: u0 {0, 1}, u1 {0, 1, 2}, u2 {1, 2}, u3 {3}. Items' users: 2, 3, 2, 1.
# Co-occurrence (0, 1) = 2, (0, 2) = 1, (1, 2) = 2, item 3 with none, so
# cos(0, 1) = cos(1, 2) = 2 / sqrt(6), cos(0, 2) = 1 / 2.
HAND = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]))
C = 2 / math.sqrt(6)


def test_cosine_neighbours_hand_computed():
    full = cosine_neighbours(HAND, 3).toarray()
    np.testing.assert_allclose(full, [[0, C, 0.5, 0], [C, 0, C, 0], [0.5, C, 0, 0],
                                      [0, 0, 0, 0]])
    # One neighbour: item 1's tie between items 0 and 2 goes to the lower index.
    one = cosine_neighbours(HAND, 1).toarray()
    np.testing.assert_allclose(one, [[0, C, 0, 0], [C, 0, 0, 0], [0, C, 0, 0], [0, 0, 0, 0]])


def test_item_knn_scores_sum_the_neighbours_of_the_users_items():
    two = ItemKNN(neighbours=2).fit(HAND)
    np.testing.assert_allclose(two.scores(np.array([2, 3])),
                               [[C + 0.5, C, C, 0], [0, 0, 0, 0]])
    one = ItemKNN(neighbours=1).fit(HAND)
    np.testing.assert_allclose(one.scores(np.array([0])), [[C, C, 0, 0]])
    # A cut of a larger similarity (what tuning does) is the same model.
    cut = ItemKNN(neighbours=1).fit(HAND, cosine_neighbours(HAND, 3))
    assert (cut.similarity_ != one.similarity_).nnz == 0
    with pytest.raises(ValueError, match="neighbours = 0"):
        ItemKNN(neighbours=0)
    with pytest.raises(RuntimeError, match="before fit"):
        ItemKNN().scores(np.array([0]))


def test_tune_item_knn_picks_the_best_count_like_separate_fits():
    train, validation = _data((60, 50), seed=3)
    candidates = np.asarray(train.sum(axis=0)).ravel() > 0
    best, table = tune_item_knn(train, validation, (1, 3, 10, 49), k=5)
    assert list(table["neighbours"]) == [1, 3, 10, 49]
    for n, ndcg in zip(table["neighbours"], table["ndcg@5"], strict=True):
        top, _ = top_k_from_scores(ItemKNN(n).fit(train).scores, 60, 5, exclude=train,
                                   candidates=candidates)
        assert ranking_metrics(top, validation, (5,))["ndcg@5"] == pytest.approx(ndcg)
    assert best == table.loc[table["ndcg@5"].idxmax(), "neighbours"]


# --- which baseline, and the analysis tables -------------------------------------------------


def test_similarity_baseline_switches_past_the_threshold():
    assert similarity_baseline(700, 9_000)[0] == "ease"
    assert "dual" in similarity_baseline(700, 9_000)[1]
    assert "primal" in similarity_baseline(9_000, 700)[1]
    name, reason = similarity_baseline(30_000, 20_000, max_dim=10_000)
    assert name == "item_knn" and "20,000 > 10,000" in reason


class _Data:
    """The two things `baseline_top_lists` reads of a `ProcessedData`."""

    def __init__(self, seed):
        train, validation = _data((60, 50), seed)
        test = _data((60, 50), seed + 1)[1]
        test = test - test.multiply(train + validation)  # test pairs are new pairs
        test.eliminate_zeros()
        self.splits = {"train": train, "validation": validation, "test": sp.csr_matrix(test)}
        self.num_users = 60

    def interactions(self, split):
        return self.splits[split].copy()


@pytest.mark.parametrize("max_dim", [5_000, 10])
def test_baseline_top_lists_names_the_baseline_that_ran(max_dim):
    with captured_log() as lines:
        lists, seconds, tuning = analysis.baseline_top_lists(_Data(4), 10, fast=True,
                                                             ease_max_dim=max_dim)
    name = "ease" if max_dim > 60 else "item_knn"
    assert set(lists) == {"most_popular", name} and set(seconds) == set(lists)
    assert tuning.attrs["baseline"] == name and lines == [tuning.attrs["note"]]
    assert tuning.index.name == ("l2" if name == "ease" else "neighbours")
    assert tuning["chosen"].sum() == 1
    table = analysis.metric_table(lists, _Data(4).interactions("test"), [10], ["ndcg"])
    record = analysis.evaluation_record(table, seconds, tuning)
    assert record["baseline"] == name and record["baseline_note"] == lines[0]
    chosen = float(tuning.index[tuning["chosen"]][0])
    if name == "ease":
        assert record["ease_l2"] == chosen
    else:
        assert record["ease_l2"] is None and record["knn_neighbours"] == chosen
        assert "item-kNN stands in for EASE" in lines[0]
