"""One reading of `KEY VALUE` overrides for every command line (issue 11, point 6):
`config.parse_value` / `parse_overrides`, used by the pipeline's, the data stage's and the
distributed trainer's `-p` and by the benchmarks' `--set` (through `benchmarks/_common.py`)."""

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from twotower_utils.config import ConfigError, parse_overrides, parse_value
from twotower_utils.pipeline import runner as pipeline

PROJECT = Path(__file__).resolve().parents[2]
BENCHMARKS = PROJECT / "benchmarks"


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("false", False), ("3", 3), ("0.8", 0.8), ("1e-3", 0.001),
    ("null", None), ('{"a": 1}', {"a": 1}), ("[64, 32]", [64, 32]), ("{epochs: 3}", {"epochs": 3}),
    ('"3"', "3"), ("rating >= 4", "rating >= 4"), ("rating => 4", "rating => 4"),
    ("temporal", "temporal"), ("movielens-100k", "movielens-100k"),
    ("2020-01-01", "2020-01-01"),  # YAML would make it a date, which is not JSON data
    ("@x", "@x"),  # YAML refuses it; plain text stays the text
])
def test_a_value_is_json_else_yaml_else_the_text(text, expected):
    assert parse_value(text) == expected
    assert type(parse_value(text)) is type(expected)


@pytest.mark.parametrize("text", ['{"a": 1', "[64,", '"open', "{a: [1}"])
def test_a_value_meant_as_data_that_does_not_parse_is_an_error(text):
    with pytest.raises(ValueError, match="not valid JSON or YAML"):
        parse_value(text)


def test_overrides_keep_order_a_later_key_wins_and_an_error_names_the_key():
    assert parse_overrides([("training.epochs", "3"), ("model.hidden_layers", "[64, 32]"),
                            ("training.epochs", "5")]) == {
        "training.epochs": 5, "model.hidden_layers": [64, 32]}
    assert parse_overrides(None) == {} == parse_overrides([])
    with pytest.raises(ConfigError, match=re.escape("model.hidden_layers = '[64,': cannot "
                                                    "parse the value")):
        parse_overrides([("training.epochs", "3"), ("model.hidden_layers", "[64,")])


def test_the_pipeline_reads_its_pairs_with_the_shared_parser(tmp_path):
    overrides, params = pipeline.parse_parameters(
        [("training.learning_rate", "1e-3"), ("data.label", "rating >= 4"), ("FAST", "true")])
    assert overrides == {"training.learning_rate": 0.001, "data.label": "rating >= 4"}
    assert params == {"FAST": True}
    with pytest.raises(ConfigError, match="model.hidden_layers"):
        pipeline.parse_parameters([("model.hidden_layers", "[64,")])
    config = tmp_path / "config.json"
    config.write_text("{}")
    assert pipeline.main(["--config", str(config), "-p", "model.hidden_layers", "[64,"]) == 2


def test_the_data_stage_cli_refuses_a_bad_value_naming_the_key(capsys):
    from twotower_utils.data.preprocessing import main

    with pytest.raises(SystemExit) as exit_info:
        main(["-p", "data.synthetic", '{"num_users": 10'])
    assert exit_info.value.code == 2
    assert "data.synthetic = '{\"num_users\": 10'" in capsys.readouterr().err


def test_every_cli_and_benchmark_reads_overrides_one_way():
    package = PROJECT / "twotower_utils"
    for module in ("pipeline/runner.py", "data/preprocessing.py", "model/distributed.py"):
        source = (package / module).read_text()
        assert "parse_overrides(" in source, module
        assert "yaml.safe_load(text)" not in source and "_parse_value" not in source, module
    for script in sorted(BENCHMARKS.glob("*.py")):
        source = script.read_text()
        if script.name == "_common.py":
            continue
        assert "sys.path.insert" not in source, f"{script.name}: import _common instead"
        assert "../shared" not in source and '"shared"' not in source, script.name
        assert '"data.split.method": "benchmark"' not in source, f"{script.name}: use " \
            "_common.ML100K_OVERRIDES"
        if '"--set"' in source or "--ml100k-dir" in source.split('"""', 2)[-1]:
            pytest.fail(f"{script.name}: add the option with _common")


def _common():
    spec = importlib.util.spec_from_file_location("_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_share_set_and_ml100k_dir(monkeypatch, tmp_path, capsys):
    common = _common()
    assert str(PROJECT) in sys.path
    assert common.ML100K_OVERRIDES == {"data.dataset": "movielens-100k",
                                       "data.split.method": "benchmark"}
    parser = argparse.ArgumentParser()
    common.add_set_option(parser)
    common.add_ml100k_option(parser)
    args = parser.parse_args(["--set", "training.epochs", "3", "--set", "data.label",
                              "rating >= 4", "--ml100k-dir", str(tmp_path)])
    assert common.set_overrides(parser, args) == {"training.epochs": 3,
                                                  "data.label": "rating >= 4"}
    monkeypatch.setenv("TWOTOWER_ML100K_DIR", "")  # restored after the test
    monkeypatch.delenv("TWOTOWER_ML100K_DIR")
    assert common.use_ml100k_dir(parser.parse_args([])) is None
    assert common.use_ml100k_dir(args) == str(tmp_path.resolve())
    with pytest.raises(SystemExit):
        common.set_overrides(parser, parser.parse_args(["--set", "model.hidden_layers", "[64,"]))
    assert "--set model.hidden_layers = '[64,'" in capsys.readouterr().err


def test_quick_is_shorthand_for_three_members_and_explicit_options_win(monkeypatch):
    from twotower_utils.config import load_config
    from twotower_utils.pipeline.runs import QUICK_OVERRIDES

    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: calls.append(args))
    config = str(PROJECT / "config.json")
    assert pipeline.main(["--config", config, "--quick", "--no-html"]) == 0
    assert pipeline.main(["--config", config, "--quick", "-p", "training.epochs", "3"]) == 0
    assert pipeline.main(["--config", config, "--quick", "-p", "model.ensemble_size", "2",
                          "-p", "model.ensemble_member_overrides", "[{}, {}]"]) == 0
    quick, with_epochs, explicit = (call[1] for call in calls)
    assert quick == QUICK_OVERRIDES
    assert with_epochs == {**QUICK_OVERRIDES, "training.epochs": 3}
    assert explicit == {"model.ensemble_size": 2, "model.ensemble_member_overrides": [{}, {}]}
    from twotower_utils.pipeline import sweeps

    swept = []
    monkeypatch.setattr(sweeps, "run_sweep", lambda *args, **kwargs: swept.append(args)
                        or {"runs": []})
    assert pipeline.main(["--config", config, "--sweep", "grid.yaml", "--quick"]) == 0
    assert swept[0][2] == QUICK_OVERRIDES  # under the grid's base and points
    resolved = load_config(PROJECT / "config.json", quick)
    assert resolved.model.ensemble_size == 3
    assert [member.get("training.loss", "bce") for member in
            resolved.model.ensemble_member_overrides] == ["bce", "softmax", "softmax"]
