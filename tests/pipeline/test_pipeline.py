"""The notebooks, the papermill pipeline and its reports.

The end-to-end test runs all five notebooks once on a tiny synthetic dataset with FAST
settings (one module-scoped run, ~1 minute on two busy cores) and checks the recorded metrics
and every report file. The other tests are cheap: parsing, notebook structure, the index page
and the error paths that stop before a kernel starts.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from twotower_utils.pipeline import runner as pipeline
from twotower_utils.pipeline.nbtools import StageError, ensure_kernel, execute_notebook
from twotower_utils.reports.index import write_index

PROJECT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((PROJECT / "notebooks").glob("*.ipynb"))
TINY = {
    "data.dataset": "synthetic", "data.user_features": None, "data.item_features": None,
    "data.synthetic.num_users": 300, "data.synthetic.num_items": 200,
    "data.synthetic.num_interactions": 6000,
    # small batches and a higher rate, so that two FAST epochs are enough steps to learn
    "training.batch_size": 64, "training.learning_rate": 0.02,
}
TF_FREE = ("01_eda.ipynb", "02_preprocessing.ipynb")


# ----------------------------------------------------------------------------- cheap checks
def test_stage_selection_accepts_names_numbers_and_notebooks():
    assert pipeline.select_stages() == [name for name, _ in pipeline.STAGES]
    assert pipeline.select_stages(["3", "eda"]) == ["eda", "training"]
    assert pipeline.select_stages(from_stage="04_evaluation") == ["evaluation", "embeddings"]
    with pytest.raises(ValueError, match="--stage 'train'.*expected one of"):
        pipeline.select_stages(["train"])
    with pytest.raises(ValueError, match="cannot be combined"):
        pipeline.select_stages(["1"], "2")


def test_parameters_split_into_config_overrides_and_notebook_parameters(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("FAST: true\ntraining: {epochs: 3}\ndata.num_negatives: 2\n")
    overrides, params = pipeline.parse_parameters(
        [("data.num_negatives", "8"), ("model.hidden_layers", "[64, 32]"), ("FAST", "false")],
        path)
    assert params == {"FAST": False}  # the command line wins over the file
    assert overrides == {"training": {"epochs": 3}, "data.num_negatives": 8,
                         "model.hidden_layers": [64, 32]}
    with pytest.raises(ValueError, match="OVERRIDES cannot be set directly"):
        pipeline.parse_parameters([("OVERRIDES", "{}")])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_follow_the_house_layout(path):
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), "title first"
    assert len(cells[0].source.split("\n\n", 1)) == 2, "a paragraph under the title"
    code = [c for c in cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "exactly one parameters cell, first"
    names = re.findall(r"^(\w+)\s*=", tagged[0].source, re.MULTILINE)
    assert names and all(n.isupper() for n in names), f"parameters must be UPPER_CASE: {names}"
    assert set(pipeline.COMMON_PARAMETERS) <= set(names)
    assert "from twotower_utils" in code[1].source, "imports come right after the parameters"
    for cell in code:
        assert not re.search(r"^\s*(def|class|for|while|if) ", cell.source, re.MULTILINE), \
            f"{path.name}: logic belongs in twotower_utils, not in a notebook cell"
    if path.name in TF_FREE:
        text = "\n".join(c.source for c in code)
        assert "tensorflow" not in text and "TwoTowerRecallSystem" not in text


def test_analysis_modules_import_without_tensorflow():
    code = ("import sys; import twotower_utils.reports.eda, twotower_utils.reports.plots,"
            " twotower_utils.pipeline.runs, twotower_utils.reports.analysis,"
            " twotower_utils.reports.embedding_analysis,"
            " twotower_utils.pipeline.runner, twotower_utils.reports.index;"
            " print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PROJECT, check=True)
    assert result.stdout.strip() == "False"


def test_index_lists_every_run_with_metrics_and_links(tmp_path):
    for run_id, status, ndcg in (("r1", "ok", 0.41), ("r2", "failed", None)):
        run = tmp_path / run_id
        run.mkdir()
        summary = {"run_id": run_id, "status": status, "dataset": "synthetic",
                   "started": f"2026-01-0{run_id[1]} 10:00:00", "timings": {"total": 12.0},
                   "stages": [{"name": "eda", "html": "01_eda.html",
                               "html_noinput": "01_eda.noinput.html"}],
                   "metrics": {"two_tower": {"ndcg@10": ndcg}, "ease": {"ndcg@10": 0.3}}
                   if ndcg else {}}
        if status == "failed":
            summary["failure"] = {"message": "KeyError: <boom>"}
        (run / "summary.json").write_text(json.dumps(summary))
    page = write_index(tmp_path).read_text()
    assert page.index("r2") < page.index("r1"), "newest first"
    assert "0.4100" in page and "ease 0.3000" in page
    assert 'href="r1/01_eda.html"' in page and 'href="r1/01_eda.noinput.html"' in page
    assert "KeyError: &lt;boom&gt;" in page, "failure messages are escaped"


def _cli(*args, cwd=PROJECT):
    return subprocess.run([sys.executable, "-m", "twotower_utils.pipeline", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_bad_config_key_and_unknown_parameter_stop_before_any_notebook(tmp_path):
    shutil.copy(PROJECT / "config.json", tmp_path / "config.json")
    result = _cli("--config", str(tmp_path / "config.json"), "-p", "training.epoch", "3")
    assert result.returncode == 2
    assert "training.epoch: unknown key" in result.stderr
    result = _cli("--config", str(tmp_path / "config.json"), "-p", "EPOCHS", "3")
    assert result.returncode == 2 and "unknown notebook parameter(s) ['EPOCHS']" in result.stderr
    assert not (tmp_path / "reports").exists()


# ----------------------------------------------------------------------------- kernels
def test_kernel_runs_this_interpreter_and_cell_timeout_stops_with_the_cell(tmp_path):
    notebook = new_notebook(cells=[
        new_code_cell("WAIT = 0", metadata={"tags": ["parameters"]}),
        new_code_cell("import sys\nprint(sys.executable)"),
        new_code_cell("import time\ntime.sleep(WAIT)"),
    ])
    source = tmp_path / "probe.ipynb"
    nbformat.write(notebook, source)
    with pytest.raises(StageError) as caught:
        execute_notebook(source, tmp_path / "out.ipynb", {"WAIT": 30}, ensure_kernel(),
                         cell_timeout=3)
    assert caught.value.notebook == "probe.ipynb" and caught.value.cell == 4
    assert "Timeout" in caught.value.error or "timed out" in caught.value.error
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    printed = executed.cells[2].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


def test_training_cells_run_unbounded_unless_a_timeout_is_given():
    from twotower_utils.pipeline.runner import DEFAULT_CELL_TIMEOUT, _Settings, stage_cell_timeout

    default = _Settings("k", None, False, False, Path("."))
    assert stage_cell_timeout("training", default) is None
    assert stage_cell_timeout("evaluation", default) == DEFAULT_CELL_TIMEOUT
    given = _Settings("k", 30, False, False, Path("."))
    assert {stage_cell_timeout(s, given) for s in ("training", "eda")} == {30}


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole pipeline, FAST, on tiny synthetic data, in a scratch project directory.

    The notebooks are copied with one extra last cell in 01 and 02 that records whether
    TensorFlow was imported, so the test checks the kernels, not just the imports.
    """
    root = tmp_path_factory.mktemp("project")
    shutil.copy(PROJECT / "config.json", root / "config.json")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        if path.name in TF_FREE:
            notebook.cells.append(new_code_cell(
                "import sys\nrun.record('tf_' + RUN_ID, {'imported': 'tensorflow' in sys.modules})"
                .replace("RUN_ID", repr(path.stem))))
        nbformat.write(notebook, notebooks / path.name)
    summary = pipeline.run_pipeline(
        root / "config.json", TINY, {"FAST": True}, run_id="tiny", notebooks_dir=notebooks,
        cell_timeout=300)
    return root, summary


@pytest.mark.tf
def test_pipeline_writes_every_report_and_the_model_beats_popularity(tiny_run):
    root, summary = tiny_run
    reports = root / "reports" / "tiny"
    assert summary["status"] == "ok"
    for _, name in pipeline.STAGES:
        stem = name.removesuffix(".ipynb")
        for suffix in (".ipynb", ".html", ".noinput.html"):
            assert (reports / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix}"
    assert 'class="jp-CodeMirrorEditor' in (reports / "04_evaluation.html").read_text()
    assert 'class="jp-CodeMirrorEditor' not in (reports / "04_evaluation.noinput.html").read_text()
    saved = json.loads((reports / "summary.json").read_text())
    metrics = saved["metrics"]
    assert metrics["two_tower"]["ndcg@10"] > metrics["most_popular"]["ndcg@10"]
    assert metrics["two_tower"]["recall@10"] > metrics["most_popular"]["recall@10"]
    assert set(saved["timings"]) == ({name for name, _ in pipeline.STAGES}
                                     | {"total", "this_invocation"})
    assert saved["config"]["data"]["dataset"] == "synthetic" and saved["fast"] is True
    assert saved["config"]["training"]["epochs"] == 2, "FAST settings reach the notebooks"
    assert saved["results"]["training"]["epochs_run"] <= 2
    assert (root / "models" / "tiny" / "item_embeddings.npy").is_file()
    assert 'href="tiny/05_embeddings.html"' in (root / "reports" / "index.html").read_text()


@pytest.mark.tf
def test_eda_and_preprocessing_kernels_never_import_tensorflow(tiny_run):
    _, summary = tiny_run
    results = json.loads((Path(summary["config_path"]).parent / "reports" / "tiny" /
                          "summary.json").read_text())["results"]
    assert results["tf_01_eda"] == {"imported": False}
    assert results["tf_02_preprocessing"] == {"imported": False}


def test_a_failing_notebook_stops_the_run_names_it_and_keeps_it(tmp_path):
    shutil.copy(PROJECT / "config.json", tmp_path / "config.json")
    result = _cli("--config", str(tmp_path / "config.json"), "--run-id", "broken",
                  "-p", "data.dataset", "csv", "-p", "data.users_csv", "nowhere/users.csv",
                  "-p", "data.items_csv", "nowhere/items.csv",
                  "-p", "data.interactions_csv", "nowhere/interactions.csv")
    assert result.returncode == 1, result.stderr
    assert re.search(r"notebook 01_eda\.ipynb failed at cell \d+ \(In \[\d+\]\)", result.stderr)
    assert "users.csv" in result.stderr, "the error itself is shown"
    reports = tmp_path / "reports" / "broken"
    assert (reports / "01_eda.ipynb").is_file() and (reports / "01_eda.html").is_file()
    assert not (reports / "02_preprocessing.ipynb").exists(), "later stages never ran"
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure"]["notebook"] == "01_eda.ipynb"
    assert "failed" in (tmp_path / "reports" / "index.html").read_text()
