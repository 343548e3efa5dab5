"""The towers' feature preprocessing layers (`FeatureEncoding`) on small hand-made tables:
the specs the data stage fits, the raw values it stores, and the one encoding of both."""

import os

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from twotower_utils.data.features import (  # noqa: E402
    fit_feature_specs,
    raw_feature_record,
    raw_feature_tables,
)
from twotower_utils.model.encoding import FeatureEncoding  # noqa: E402


@pytest.fixture()
def items():
    return pd.DataFrame({
        "item_id": ["a", "b", "c", "d"],
        "kind": ["film", "show", None, "film"],
        "year": [1990, 2000, None, 2010],
        "tags": ["x|y", "y", "", "z|x|y"],
    })


def _encode(specs, table):
    return {name: value.numpy()
            for name, value in FeatureEncoding(specs)(raw_feature_tables(table, specs)).items()}


def test_encoder_codes_categorical_numeric_and_multi_hot(items):
    specs = fit_feature_specs(items, {"kind": "categorical", "year": "numeric",
                                      "tags": "multi_hot"})
    encoded = _encode(specs, items)
    assert specs[0]["vocabulary"] == ["film", "show"]
    np.testing.assert_array_equal(encoded["kind"], [1, 2, 0, 1])  # missing -> 0 (unknown)
    np.testing.assert_allclose(encoded["year"], [-1.2247449, 0.0, 0.0, 1.2247449], rtol=1e-6)
    assert encoded["year"].dtype == np.float32
    assert encoded["tags"].shape == (4, 3)  # padded to the longest list
    np.testing.assert_array_equal(encoded["tags"], [[1, 2, 0], [2, 0, 0], [0, 0, 0], [3, 1, 2]])


def test_encoder_rebuilt_from_specs_encodes_a_new_record_the_same_way(items):
    specs = fit_feature_specs(items, {"kind": "categorical", "tags": "multi_hot"})
    rebuilt = FeatureEncoding(specs)
    new = rebuilt(raw_feature_record({"kind": "show", "tags": "z|unseen"}, specs))
    assert new["kind"].numpy().tolist() == [2]
    assert new["tags"].numpy().tolist() == [[3, 0, 0]]
    unknown = rebuilt(raw_feature_record({}, specs))
    assert unknown["kind"].numpy().tolist() == [0]


def test_encoder_names_missing_columns(items):
    specs = fit_feature_specs(items, {"kind": "categorical"})
    with pytest.raises(KeyError, match="feature columns missing: kind"):
        raw_feature_tables(items.drop(columns="kind"), specs)
    with pytest.raises(KeyError, match="raw features missing: kind"):
        FeatureEncoding(specs)({"year": tf.constant([1.0])})


def test_raw_strings_are_stripped_unknowns_dropped_and_lists_cut_to_the_fitted_length():
    # What a SavedModel client sends: untrimmed strings, unseen values, NaN, longer lists.
    table = pd.DataFrame({"genre": ["a|b", "c", "", "b|zz|a|c"], "job": [" x", "y", "x", "q"],
                          "age": [20.0, 31.5, np.nan, 44.0]})
    specs = fit_feature_specs(table.iloc[:3], {"genre": "multi_hot", "job": "categorical",
                                               "age": "numeric"})
    encoding = FeatureEncoding(specs)
    assert encoding.signature()["age"].dtype == tf.float64
    assert encoding.signature()["job"].dtype == tf.string
    got = encoding({"genre": tf.constant(table["genre"].tolist()),
                    "job": tf.constant(table["job"].tolist()),
                    "age": tf.constant(table["age"].to_numpy())})
    np.testing.assert_array_equal(got["genre"].numpy(), [[1, 2], [3, 0], [0, 0], [2, 1]])
    np.testing.assert_array_equal(got["job"].numpy(), [1, 2, 1, 0])
    mean, std = 25.75, 5.75
    np.testing.assert_allclose(got["age"].numpy(),
                               [(20 - mean) / std, (31.5 - mean) / std, 0.0, (44 - mean) / std],
                               rtol=1e-6)


def test_a_feature_with_no_known_value_encodes_as_unknown():
    table = pd.DataFrame({"kind": [None, ""], "tags": ["", None]})
    specs = fit_feature_specs(table, {"kind": "categorical", "tags": "multi_hot"})
    assert specs[0]["vocabulary"] == [] and specs[1]["vocabulary"] == []
    encoded = _encode(specs, pd.DataFrame({"kind": ["x", ""], "tags": ["y|z", ""]}))
    np.testing.assert_array_equal(encoded["kind"], [0, 0])
    np.testing.assert_array_equal(encoded["tags"], [[0], [0]])
