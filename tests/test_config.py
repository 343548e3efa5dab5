"""Configuration: defaults, overrides, and one clear message for every kind of bad value."""

import json

import pytest

from twotower_utils.config import Config, ConfigError, config_from_dict, load_config


def test_shipped_config_loads_and_matches_defaults_in_shape(project_root):
    config = load_config(project_root / "config.json")
    assert config.data.dataset == "movielens-100k"
    assert config.data.split.method == "benchmark"
    assert set(config.to_dict()) == {"model", "training", "data", "evaluation", "paths",
                                     "serving"}
    # Every key of the shipped file is a real key: round-tripping loses nothing.
    shipped = json.loads((project_root / "config.json").read_text())
    assert config_from_dict(shipped).to_dict() == config.to_dict()


def test_overrides_merge_nested_and_dotted(project_root):
    config = load_config(
        project_root / "config.json",
        {"training.epochs": 2, "model": {"dropout": 0.3}, "data.split.seed": 7},
    )
    assert config.training.epochs == 2
    assert config.model.dropout == 0.3
    assert config.data.split.seed == 7
    assert config.model.embedding_dim == 64  # untouched siblings keep the file's value


def test_feature_declarations_are_replaced_whole_by_an_override(project_root):
    config = load_config(project_root / "config.json", {"data.user_features": {"age": "numeric"}})
    assert config.data.user_features == {"age": "numeric"}


def test_paths_resolve_against_the_config_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    config = load_config(tmp_path / "config.json")
    # Processed data is keyed by the data settings' fingerprint (runs own their data).
    assert config.processed_dir().parent == tmp_path / "data" / "processed"
    assert config.processed_dir().name.startswith("movielens-100k-")
    assert config.path("models_dir") == tmp_path / "models"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data.num_negatives": -1}, "data.num_negatives = -1: expected a value in [0, inf)"),
        ({"data.split.train_ratio": 1.0},
         "data.split.train_ratio = 1.0: expected a value in (0, 1)"),
        ({"data.split.validation_ratio": 0}, "data.split.validation_ratio = 0"),
        ({"model.dropout": "high"}, "model.dropout = 'high': expected a number"),
        ({"training.epochs": 2.5}, "training.epochs = 2.5: expected an integer"),
        ({"training.batch_size": True}, "training.batch_size = True: expected an integer"),
        ({"model.similarity": "l2"}, "model.similarity = 'l2': expected one of 'dot', 'cosine'"),
        ({"training.colour": "red"}, "training.colour: unknown key; allowed keys:"),
        ({"model.hidden_layers": [64, "x"]}, "model.hidden_layers = [64, 'x']: expected a list"),
        ({"model.hidden_layers": [], "model.output_projection": False},
         "model.hidden_layers = []: with model.output_projection = false"),
        ({"data.user_features": {"age": "number"}}, "data.user_features.age = 'number'"),
        ({"data.dataset": "csv"},
         "data.interactions_csv = None: required when data.dataset is 'csv'"),
        ({"evaluation.k_values": []}, "evaluation.k_values = []"),
        ({"evaluation.metrics": ["auc"]}, "evaluation.metrics = ['auc']"),
        ({"training.logq_correction": True},
         "training.logq_correction = True: with the 'bce' loss and no in-batch negatives"),
        ({"training.loss": "sampled_softmax", "training.logq_correction": True},
         "logQ correction needs data.negative_sampling = 'popularity'"),
        ({"data.num_negatives": 0}, "data.num_negatives = 0: the 'bce' loss needs negatives"),
        ({"model": 3}, "model = 3: expected an object"),
        ({"serving.index": "faiss"}, "serving.index = 'faiss': expected one of"),
        ({"model.ensemble_member_overrides": [{"model.embedding_dim": 32}]},
         "model.ensemble_member_overrides[0]: model.embedding_dim cannot differ between"),
        ({"model.ensemble_member_overrides": [{"training": {"loss": "hinge"}}]},
         "model.ensemble_member_overrides[0]: training.loss = "
         "'hinge'"),
        ({"serving.scann.num_leaves_to_search": 0},
         "serving.scann.num_leaves_to_search = 0: expected a value in [1, inf)"),
        ({"training.distribution_strategy": "tpu"},
         "training.distribution_strategy = 'tpu': expected one of 'default', 'mirrored'"),
    ],
)
def test_bad_values_are_refused_with_key_value_and_allowed(project_root, overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(project_root / "config.json", overrides)
    assert expected in str(caught.value)


def test_all_problems_are_reported_in_one_message(project_root):
    with pytest.raises(ConfigError) as caught:
        load_config(project_root / "config.json",
                    {"data.num_negatives": -2, "model.temperature": 0, "paths.nope": "x"})
    message = str(caught.value)
    assert "data.num_negatives = -2" in message
    assert "model.temperature = 0" in message
    assert "paths.nope: unknown key" in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)


def test_config_is_immutable_and_with_overrides_revalidates():
    config = Config()
    with pytest.raises(AttributeError):
        config.training.epochs = 3  # type: ignore[misc]
    assert config.with_overrides({"training.epochs": 3}).training.epochs == 3
    with pytest.raises(ConfigError):
        config.with_overrides({"training.epochs": 0})


@pytest.mark.parametrize("key", ["training.learning_rate", "model.l2_regularization",
                                 "data.split.train_ratio", "data.popularity_alpha"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(project_root, key, value):
    with pytest.raises(ConfigError, match=rf"{key} = .*finite number"):
        load_config(project_root / "config.json", {key: value})


def test_a_bad_shared_key_is_reported_once_not_once_per_member(project_root):
    with pytest.raises(ConfigError) as caught:
        load_config(project_root / "config.json", {
            "model.ensemble_size": 4, "model.ensemble_member_overrides": [{}, {}, {}, {}],
            "data.item_features": {"genres": "multihot"}})
    assert str(caught.value).count("multihot") == 1
    with pytest.raises(ConfigError, match=r"overrides\[1\]: training.loss = 'bogus'"):
        load_config(project_root / "config.json", {
            "model.ensemble_member_overrides": [{}, {"training.loss": "bogus"}]})


def test_an_empty_config_file_resolves_to_exactly_the_shipped_config(project_root, tmp_path):
    # One set of defaults: the dataclasses' defaults are config.json's values.
    (tmp_path / "config.json").write_text("{}")
    empty = load_config(tmp_path / "config.json").to_dict()
    shipped = load_config(project_root / "config.json").to_dict()
    assert empty == shipped
    assert config_from_dict({}).to_dict() == shipped
