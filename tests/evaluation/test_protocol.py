"""Tests for twotower_utils.evaluation.protocol: the one evaluation protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower_utils.data.processed import ProcessedData
from twotower_utils.evaluation.protocol import (
    evaluation_protocol,
    scored_users,
    seen_items,
    training_part,
)
from twotower_utils.reports import analysis


def _frame(pairs):
    users, items = zip(*pairs)
    return pd.DataFrame({"user_idx": np.array(users, np.int32),
                         "item_idx": np.array(items, np.int32)})


def _data() -> ProcessedData:
    """Users 1-4 and items 1-6 (index 0 is out of vocabulary); a duplicate training row."""
    train = _frame([(1, 1), (1, 2), (2, 2), (3, 3), (1, 1)])
    validation = _frame([(1, 4), (2, 1)])
    test = _frame([(1, 5), (3, 6), (4, 2)])
    data = ProcessedData(directory=Path("."), train=train, validation=validation, test=test,
                         negatives=train.iloc[:0], user_vocab=list("abcd"),
                         item_vocab=list("uvwxyz"), features={}, feature_specs={},
                         history=None, stats={})
    data.history = data.interactions("train")
    return data


def _pairs(matrix) -> set[tuple[int, int]]:
    rows, cols = matrix.nonzero()
    return set(zip(rows.tolist(), cols.tolist()))


def test_validation_protocol_excludes_training_and_ranks_the_training_items():
    data = _data()
    protocol = evaluation_protocol(data, "validation")
    assert protocol.split == "validation"
    assert protocol.users.tolist() == [1, 2]
    assert _pairs(protocol.relevant) == {(1, 4), (2, 1)}
    assert protocol.exclude is data.history
    assert np.flatnonzero(protocol.candidates).tolist() == [1, 2, 3]
    assert protocol.num_candidates == 3


def test_test_protocol_excludes_train_and_validation():
    protocol = evaluation_protocol(_data(), "test")
    assert protocol.users.tolist() == [1, 3, 4]
    assert _pairs(protocol.relevant) == {(1, 5), (3, 6), (4, 2)}
    assert _pairs(protocol.exclude) == {(1, 1), (1, 2), (2, 2), (3, 3), (1, 4), (2, 1)}
    assert set(protocol.exclude.data.tolist()) == {1.0}, "binary, duplicates once"
    assert protocol.exclude.shape == (5, 7)
    assert np.flatnonzero(protocol.candidates).tolist() == [1, 2, 3, 4]


def test_cold_items_rank_among_the_splits_own_items():
    data = _data()
    assert np.flatnonzero(evaluation_protocol(data, "validation", cold_items=True)
                          .candidates).tolist() == [1, 4]
    cold = evaluation_protocol(data, "test", cold_items=True)
    assert np.flatnonzero(cold.candidates).tolist() == [2, 5, 6]
    assert _pairs(cold.exclude) == _pairs(evaluation_protocol(data, "test").exclude)


def test_the_rules_alone_and_a_bad_split():
    data = _data()
    assert _pairs(training_part(data, "validation")) == _pairs(data.interactions("train"))
    data.history = None  # without the data stage's history, the training split's positives
    assert _pairs(training_part(data, "validation")) == _pairs(data.interactions("train"))
    assert scored_users(data.interactions("test")).tolist() == [1, 3, 4]
    assert seen_items(data.interactions("validation")).tolist() == [
        False, True, False, False, True, False, False]
    with pytest.raises(ValueError, match="expected 'test' or 'validation'"):
        evaluation_protocol(data, "train")


def test_the_reports_protocol_is_the_test_protocol():
    data = _data()
    ours, theirs = analysis.EvalProtocol(data, (5, 20)), evaluation_protocol(data, "test")
    assert ours.depth == 20
    np.testing.assert_array_equal(ours.users, theirs.users)
    np.testing.assert_array_equal(ours.candidates, theirs.candidates)
    assert _pairs(ours.exclude) == _pairs(theirs.exclude)
    assert _pairs(ours.relevant) == _pairs(theirs.relevant)
