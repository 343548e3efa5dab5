"""Run summaries and the index of all runs: `reports/<run_id>/summary.json`, `reports/index.html`.

`summary.json` is written by the pipeline after every stage (so a failed run still has one):
run id, status, timings per notebook, the resolved config, the overrides and notebook
parameters it ran with, the stages' recorded results (`reports/<run_id>/results/*.json`,
written by the notebooks through `Run.record`) and the headline metrics. `index.html` is a
static page listing every run under `reports/` with its headline metrics and links to its
HTML reports; it is rebuilt from the summaries, so deleting a run directory drops its row.
"""

from __future__ import annotations

import html
import json
import platform
import sys
from pathlib import Path
from typing import Any

from twotower_utils.io import read_json, write_json

__all__ = ["HEADLINE_METRICS", "headline_metrics", "write_summary", "read_summaries",
           "write_index", "environment"]

# Shown in the index, for the two-tower model and, in brackets, the best baseline.
HEADLINE_METRICS = ("ndcg@10", "precision@10", "recall@10", "map@10")
MAIN_MODEL = "two_tower"


def environment() -> dict[str, str]:
    """The interpreter and key package versions a run used (for reproducing it)."""
    from importlib import metadata

    versions = {}
    for package in ("tensorflow", "tensorflow-recommenders", "numpy", "pandas", "papermill"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"python": sys.version.split()[0], "executable": sys.executable,
            "platform": platform.platform(), **versions}


def headline_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """`{model: {metric: value}}` from the evaluation stage's recorded result (or {})."""
    evaluation = results.get("evaluation") or {}
    return {model: {k: float(v) for k, v in metrics.items()}
            for model, metrics in (evaluation.get("models") or {}).items()}


def write_summary(reports_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write `summary` as `reports_dir/summary.json`, merging recorded stage results in.

    Takes the run's report directory and the pipeline's summary dict (run id, status,
    stages, timings, config, ...); adds `results` and `metrics` from `results/*.json`.
    Returns the path written.
    """
    reports_dir = Path(reports_dir)
    results = {p.stem: read_json(p) for p in sorted((reports_dir / "results").glob("*.json"))}
    payload = {**summary, "results": results, "metrics": headline_metrics(results)}
    return write_json(reports_dir / "summary.json", payload)


def read_summaries(reports_root: str | Path) -> list[dict[str, Any]]:
    """Every readable `*/summary.json` under `reports_root`, newest run first."""
    summaries = []
    for path in Path(reports_root).glob("*/summary.json"):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a summary being written or damaged must not break the index
        summary["_dir"] = path.parent.name
        summaries.append(summary)
    return sorted(summaries, key=lambda s: (s.get("started", ""), s["_dir"]), reverse=True)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } p.lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem 0.7rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .failed { color: #cf222e; font-weight: bold; } .running { color: #9a6700; }
small { color: #666; } a { color: #0969da; text-decoration: none; }
"""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def _row(summary: dict[str, Any]) -> str:
    run_dir = summary["_dir"]
    metrics = summary.get("metrics") or {}
    main = metrics.get(MAIN_MODEL, {})
    baselines = {m: v for m, v in metrics.items() if m != MAIN_MODEL}
    best = max(baselines, key=lambda m: baselines[m].get("ndcg@10", -1.0), default=None)
    cells = [f"<b>{html.escape(run_dir)}</b><br><small>{html.escape(summary.get('started', ''))}"
             f"</small>",
             html.escape(str(summary.get("dataset", "?")))
             + (" <small>(FAST)</small>" if summary.get("fast") else "")]
    status = str(summary.get("status", "?"))
    detail = summary.get("failure", {}).get("message", "") if status == "failed" else ""
    cells.append(f'<span class="{html.escape(status)}">{html.escape(status)}</span>'
                 + (f"<br><small>{html.escape(detail[:160])}</small>" if detail else ""))
    total = (summary.get("timings") or {}).get("total")
    cells.append(f"{total:.0f} s" if isinstance(total, int | float) else "–")
    for metric in HEADLINE_METRICS:
        text = _fmt(main.get(metric))
        if best is not None and metric in baselines[best]:
            text += f"<br><small>{html.escape(best)} {_fmt(baselines[best][metric])}</small>"
        cells.append(text)
    links = []
    for stage in summary.get("stages", []):
        if stage.get("html"):
            share = (f' · <a href="{run_dir}/{stage["html_noinput"]}">no code</a>'
                     if stage.get("html_noinput") else "")
            links.append(f'<a href="{run_dir}/{stage["html"]}">{html.escape(stage["name"])}</a>'
                         + share)
    links.append(f'<a href="{run_dir}/summary.json">summary.json</a>')
    cells.append("<br>".join(links))
    classes = ["", "", "", "num"] + ["num"] * len(HEADLINE_METRICS) + [""]
    return "<tr>" + "".join(
        f'<td class="{c}">{cell}</td>' if c else f"<td>{cell}</td>"
        for c, cell in zip(classes, cells, strict=True)
    ) + "</tr>"


def write_index(reports_root: str | Path) -> Path:
    """Rebuild `reports_root/index.html` from every run's summary; returns its path."""
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    summaries = read_summaries(reports_root)
    header = ["run", "dataset", "status", "time"] + [
        f"{m}<br><small>two-tower (best baseline)</small>" for m in HEADLINE_METRICS
    ] + ["reports"]
    rows = "\n".join(_row(s) for s in summaries) or (
        f'<tr><td colspan="{len(header)}">no runs yet: <code>make run</code></td></tr>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>twotower runs</title>
<style>{_STYLE}</style></head>
<body>
<h1>twotower runs</h1>
<p class="lead">{len(summaries)} run(s), newest first. Metrics are on the test split, computed
over the full catalogue with each user's training items excluded; the small line under each
value is the best baseline of the same run. Each notebook has a full report and a "no code"
version for sharing.</p>
<table>
<thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""
    path = reports_root / "index.html"
    path.write_text(page)
    return path
