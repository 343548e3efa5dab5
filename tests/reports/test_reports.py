"""The HTML reports stand alone offline, and the shared variant is fit to send.

No kernel runs here: the notebooks are built with their outputs in place, as papermill
would have left them, so the checks are fast and look at rendering alone.
"""

import base64
import json
import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from twotower_utils.pipeline.nbtools import render_html
from twotower_utils.reports.index import write_index
from twotower_utils.reports.sharing import redact_paths

# A 1x1 PNG: enough for the check that figures are embedded, not linked.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
# External resources: a script, stylesheet, image or font fetched from anywhere but the page.
EXTERNAL = re.compile(r"""<(script|link|img|iframe)[^>]+(src|href)=["']?(https?:)?//""", re.I)


def _executed(root: Path) -> Path:
    notebook = new_notebook(cells=[
        new_markdown_cell("# A report\n\nWith a figure."),
        new_code_cell("print(run.describe())", outputs=[
            new_output("stream", name="stdout",
                       text=f"config:  {root}/config.json\nreports: {root}/reports/r1\n"
                            "data:    /srv/elsewhere/datasets/ml-100k\n"),
            new_output("stream", name="stderr",
                       text="UserWarning: non-serializable get_config\n"
                            "E0000 cuInit: CUDA_ERROR_NO_DEVICE\n"),
            # the same library lines, passed on to stdout by a logging handler
            new_output("stream", name="stdout",
                       text="WARNING:tensorflow:Model's arguments: implement `get_config()`\n"
                            "2026-12-02 00:46:05.1: E external/cuda_platform.cc:51] cuInit\n"
                            f"{root}/x.py:3: UserWarning: deprecated\n  warnings.warn(w)\n"
                            "trained 2 epochs\n"),
        ]),
        new_code_cell("plots.plot_x()", outputs=[
            new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        ]),
        new_code_cell("1 / 0", outputs=[
            new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                       traceback=[f'File "{root}/.venv/lib/python3.11/x.py", line 3']),
        ]),
    ])
    (root / "config.json").write_text("{}")
    path = root / "reports" / "r1" / "01_eda.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(notebook, path)
    return path


def test_reports_fetch_nothing_and_embed_their_figures(tmp_path):
    full, shared = render_html(_executed(tmp_path))
    for path in (full, shared):
        page = path.read_text()
        assert not EXTERNAL.search(page), f"{path.name} fetches {EXTERNAL.search(page)[0]}"
        assert "require.min.js" not in page and "MathJax.Hub" not in page
        assert f"data:image/png;base64,{PNG[:20]}" in page, f"{path.name}: figure not embedded"
    assert 'class="jp-CodeMirrorEditor' in full.read_text()
    assert 'class="jp-CodeMirrorEditor' not in shared.read_text()


def test_shared_report_has_no_warnings_stack_or_machine_paths(tmp_path):
    full, shared = render_html(_executed(tmp_path))
    page = shared.read_text()
    assert "get_config" not in page and "cuInit" not in page, "library warnings are left out"
    assert "UserWarning" not in page and "warnings.warn" not in page
    assert "trained 2 epochs" in page, "the notebook's own output stays"
    assert "This cell failed: ZeroDivisionError: division by zero" in page
    assert ".venv/lib" not in page, "no traceback"
    for text in (page, full.read_text()):
        assert str(tmp_path) not in text and "/srv/elsewhere" not in text
    assert "reports/r1" in page and "…/ml-100k" in page


def test_paths_are_shown_relative_to_the_project():
    root = Path("/home/someone/project")
    text = (f"{root}/reports/x.html and {root} and /opt/data/ml-100k/u.data, "
            "https://example.org/a/b stays, </td> stays")
    assert redact_paths(text, root) == ("reports/x.html and  and …/u.data, "
                                        "https://example.org/a/b stays, </td> stays")


def test_index_is_self_contained_sorted_and_marks_the_best_run(tmp_path):
    for run_id, day, ndcg in (("a", 1, 0.2), ("b", 3, 0.5), ("c", 2, 0.3)):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "summary.json").write_text(json.dumps({
            "run_id": run_id, "status": "ok", "started": f"2026-01-0{day} 10:00:00",
            "metrics": {"two_tower": {"ndcg@10": ndcg}}}))
    page = write_index(tmp_path).read_text()
    assert page.index("<b>b</b>") < page.index("<b>c</b>") < page.index("<b>a</b>")
    assert re.search(r'class="num best">0\.5000', page)
    assert not EXTERNAL.search(page) and "<script" not in page
