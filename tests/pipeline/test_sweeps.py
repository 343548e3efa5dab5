"""Sweeps: grid files parse into points, and a 2x2 grid runs, fails one point, compares.

The end-to-end test runs a 2x2 grid (embedding size x learning rate) on a tiny synthetic
dataset with FAST settings and one BCE model, through the EDA (once: the data settings are
the same for every point), preprocessing, training and evaluation stages (~2.5 minutes on
two busy cores). One point fails on purpose: the copied
training notebook gets one extra cell that stops it for that combination, so the failure
goes through the real path (a notebook error), not a mock.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell
from synthetic_settings import SMALL_SYNTHETIC

from twotower_utils.pipeline import sweeps

PROJECT = Path(__file__).resolve().parents[2]
GRID = {
    "name": "tiny",
    "stages": ["eda", "preprocessing", "training", "evaluation"],
    "base": {**SMALL_SYNTHETIC, "data.synthetic.num_users": 150,
             "data.synthetic.num_items": 80, "data.synthetic.num_interactions": 2500,
             "FAST": True},
    "grid": {"model.embedding_dim": [8, 16], "training.learning_rate": [0.01, 0.05]},
}
FAILING = "embedding_dim-8_learning_rate-0.05"


def test_a_grid_is_the_product_of_its_values_and_runs_are_named_sets(tmp_path):
    sweep = sweeps.load_sweep(GRID)
    assert [p.name for p in sweep.points] == [
        "embedding_dim-8_learning_rate-0.01", FAILING,
        "embedding_dim-16_learning_rate-0.01", "embedding_dim-16_learning_rate-0.05"]
    assert sweep.levers == ["model.embedding_dim", "training.learning_rate"]
    assert sweep.points[1].settings == {"model.embedding_dim": 8, "training.learning_rate": 0.05}
    path = tmp_path / "losses.yaml"
    path.write_text("runs:\n  bce: {training.loss: bce}\n"
                    "  softmax: {training.loss: sampled_softmax, data.num_negatives: 64}\n")
    named = sweeps.load_sweep(path)
    assert named.name == "losses" and [p.name for p in named.points] == ["bce", "softmax"]
    assert named.levers == ["training.loss", "data.num_negatives"]
    with pytest.raises(ValueError, match="either `grid:`"):
        sweeps.load_sweep({"grid": {"a": [1]}, "runs": {"x": {}}})
    with pytest.raises(ValueError, match="no values for"):
        sweeps.load_sweep({"grid": {"a": []}})
    with pytest.raises(ValueError, match="unknown key"):
        sweeps.load_sweep({"grids": {}})


def test_cli_and_make_target(tmp_path):
    result = subprocess.run([sys.executable, "-m", "twotower_utils.pipeline", "--sweep",
                             str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                            cwd=PROJECT, timeout=120)
    assert result.returncode == 2 and "no such file" in result.stderr
    makefile = (PROJECT / "Makefile").read_text()
    assert "--sweep $(ARGS)" in makefile and "\nsweep:" in makefile


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(PROJECT / "config.json", root / "config.json")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    for path in (PROJECT / "notebooks").glob("*.ipynb"):  # not the kernels' ipc sockets
        shutil.copy(path, notebooks / path.name)
    training = nbformat.read(notebooks / "03_training.ipynb", as_version=4)
    training.cells.insert(3, new_code_cell(
        "assert not (run.config.model.embedding_dim == 8 and"
        " run.config.training.learning_rate == 0.05), 'deliberately failing grid point'"))
    nbformat.write(training, notebooks / "03_training.ipynb")
    record = sweeps.run_sweep(GRID, root / "config.json", sweep_id="tiny",
                              notebooks_dir=notebooks, cell_timeout=300)
    return root / "reports", record


@pytest.mark.tf
def test_sweep_runs_every_point_records_the_failure_and_compares(tiny_sweep):
    reports, record = tiny_sweep
    status = {run["name"]: run["status"] for run in record["runs"]}
    assert status.pop(FAILING) == "failed" and set(status.values()) == {"ok"}
    failed = next(run for run in record["runs"] if run["name"] == FAILING)
    assert "deliberately failing grid point" in failed["failure"]
    for run in record["runs"]:
        if run["status"] == "ok":
            assert run["validation"]["ndcg@10"] > 0 and run["test"]["ndcg@10"] > 0
            assert {r["name"] for r in run["reports"]} == set(GRID["stages"])
    assert record["best"] in status
    first, *later = record["runs"]
    assert "eda_from" not in first and (reports / first["run_id"] / "01_eda.html").is_file()
    for run in later:  # same data settings: the EDA ran once, the others link it
        assert run["eda_from"] == first["run_id"]
        assert not (reports / run["run_id"] / "01_eda.ipynb").exists()
        assert run["reports"][0]["html"] == f"{first['run_id']}/01_eda.html"
    saved = json.loads((reports / "sweeps" / "tiny" / "sweep.json").read_text())
    assert saved["best"] == record["best"] and saved["html"] == "sweep_report.html"

    page = (reports / "sweeps" / "tiny" / "sweep_report.html").read_text()
    assert f"Best by validation ndcg@10: {record['best']}" in page
    assert page.count("data:image/png;base64") >= 1, "the lever plot"
    assert "deliberately failing grid point" in page and ">failed<" in page
    assert f'href="../../tiny-{record["best"]}/03_training.noinput.html"' in page

    index = (reports / "index.html").read_text()
    for run in record["runs"]:
        assert f"<b>{run['run_id']}</b>" in index, f"{run['run_id']} is not in the index"
    assert 'class="failed">failed<' in index
    assert 'href="sweeps/tiny/sweep_report.html"' in index and "1 failed" in index
