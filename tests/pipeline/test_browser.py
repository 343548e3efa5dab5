"""A real browser looks at the reports: headless Chromium with the network off.

Renders `reports/index.html` and the full EDA report of a small FAST synthetic run (the EDA
and preprocessing stages: the notebooks that draw the data figures, without TensorFlow's
start-up cost), opens each in headless Chromium, and checks that no request left the
machine, no console error occurred and every figure has a non-zero size. Screenshots are
saved under the test's temporary folder (the paths are printed; `pytest -s` shows them).
Skips only when no Chromium is installed (`.ci/run` installs Debian's `chromium`).
"""

import shutil
from pathlib import Path

import pytest

from twotower_utils.pipeline import runner as pipeline
from twotower_utils.pipeline.browser import find_chromium, inspect_page

PROJECT = Path(__file__).resolve().parents[2]
TINY = {"data.dataset": "synthetic", "data.synthetic.num_users": 150,
        "data.synthetic.num_items": 80, "data.synthetic.num_interactions": 2000}

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="headless Chromium not installed (apt-get install chromium; .ci/run does this)")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(PROJECT / "config.json", root / "config.json")
    pipeline.run_pipeline(root / "config.json", TINY, {"FAST": True}, run_id="browser",
                          stages=["eda", "preprocessing"], cell_timeout=300)
    return root / "reports"


def _check(report):
    assert report.remote_requests == [], f"requests left the machine: {report.remote_requests}"
    assert report.errors == [], f"console errors: {report.errors}"
    assert report.screenshot is not None and report.screenshot.stat().st_size > 1000
    print(f"screenshot of {report.url}: {report.screenshot}")


def test_full_report_opens_offline_with_every_figure(small_run, tmp_path):
    for name in ("01_eda.html", "01_eda.noinput.html"):
        report = inspect_page(small_run / "browser" / name, tmp_path / f"{name}.png")
        _check(report)
        assert report.title.startswith("01 eda")
        assert len(report.images) >= 4, f"{name}: expected the EDA figures, got {report.images}"
        for image in report.images:
            assert image["complete"] and image["natural"] > 0, f"{name}: broken image {image}"
            assert image["width"] > 0 and image["height"] > 0, f"{name}: zero-size {image}"


def test_index_opens_offline_and_lists_the_run(small_run, tmp_path):
    report = inspect_page(small_run / "index.html", tmp_path / "index.png")
    _check(report)
    assert report.title == "twotower runs"
    assert f"{small_run.as_uri()}/index.html" in report.requests[0]


def test_the_check_sees_a_page_that_fetches_from_the_network(tmp_path):
    page = tmp_path / "cdn.html"
    page.write_text('<!DOCTYPE html><html><head><title>cdn</title>'
                    '<script src="https://cdn.example.org/require.min.js"></script></head>'
                    '<body><img src="https://example.org/x.png"></body></html>')
    report = inspect_page(page, tmp_path / "cdn.png")
    assert "https://cdn.example.org/require.min.js" in report.remote_requests
    assert report.errors, "the failed load is reported as a console error"
    assert report.images[0]["natural"] == 0, "the remote image did not load"
