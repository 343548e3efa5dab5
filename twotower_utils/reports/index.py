"""Run summaries and the index of all runs: `reports/<run_id>/summary.json`, `reports/index.html`.

`summary.json` is written by the pipeline after every stage (so a failed run still has one):
run id, status, timings per notebook, the resolved config, the overrides and notebook
parameters it ran with, the stages' recorded results (`reports/<run_id>/results/*.json`,
written by the notebooks through `Run.record`) and the headline metrics. `index.html` is a
static page listing every run under `reports/` with its headline metrics and links to its
HTML reports (and the sweeps under `reports/sweeps/`); it is rebuilt from the summaries, so
deleting a run directory drops its row.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from twotower_utils.io import read_json, write_json

__all__ = ["HEADLINE_METRICS", "headline_metrics", "write_summary", "read_summaries",
           "read_sweeps", "write_index", "environment"]

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
    return _read_records(Path(reports_root), "*/summary.json")


def _read_records(reports_root: Path, pattern: str) -> list[dict[str, Any]]:
    """The readable JSON files matching `pattern`, each with `_dir` (its folder relative to
    `reports_root`), newest first by their `started` time."""
    records = []
    for path in reports_root.glob(pattern):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record being written or damaged must not break the index
        record["_dir"] = path.parent.relative_to(reports_root).as_posix()
        records.append(record)
    return sorted(records, key=lambda r: (r.get("started", ""), r["_dir"]), reverse=True)


TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def _run_view(summary: dict[str, Any]) -> dict[str, Any]:
    """What the index template shows of one run (plain strings; the template escapes)."""
    run_dir = summary["_dir"]
    metrics = summary.get("metrics") or {}
    main = metrics.get(MAIN_MODEL, {})
    baselines = {m: v for m, v in metrics.items() if m != MAIN_MODEL}
    best = max(baselines, key=lambda m: baselines[m].get("ndcg@10", -1.0), default=None)
    cells = []
    for metric in HEADLINE_METRICS:
        baseline = (f"{best} {_fmt(baselines[best][metric])}"
                    if best is not None and metric in baselines[best] else "")
        cells.append({"metric": metric, "value": main.get(metric), "main": _fmt(main.get(metric)),
                      "baseline": baseline, "best": False})
    status = str(summary.get("status", "?"))
    failure = (summary.get("failure") or {}).get("message", "") if status == "failed" else ""
    total = (summary.get("timings") or {}).get("total")
    links = [{"name": stage["name"], "href": f"{run_dir}/{stage['html']}",
              "noinput": f"{run_dir}/{stage['html_noinput']}" if stage.get("html_noinput")
              else ""}
             for stage in summary.get("stages", []) if stage.get("html")]
    return {"dir": run_dir, "started": summary.get("started", ""),
            "dataset": str(summary.get("dataset", "?")), "fast": bool(summary.get("fast")),
            "status": status, "failure": failure[:160],
            "time": f"{total:.0f} s" if isinstance(total, int | float) else "–",
            "cells": cells, "links": links}


def _mark_best(runs: list[dict[str, Any]]) -> None:
    """Highlight each metric's best two-tower value across the runs (when two or more have it)."""
    for column in range(len(HEADLINE_METRICS)):
        values = [(r["cells"][column]["value"], r) for r in runs
                  if isinstance(r["cells"][column]["value"], int | float)]
        if len(values) >= 2:
            max(values, key=lambda pair: pair[0])[1]["cells"][column]["best"] = True


def read_sweeps(reports_root: str | Path) -> list[dict[str, Any]]:
    """Every readable `sweeps/*/sweep.json` under `reports_root`, newest first."""
    return _read_records(Path(reports_root), "sweeps/*/sweep.json")


def _sweep_view(sweep: dict[str, Any]) -> dict[str, Any]:
    runs = sweep.get("runs", [])
    return {"name": sweep.get("name", sweep["_dir"]), "started": sweep.get("started", ""),
            "ok": sum(r.get("status") == "ok" for r in runs),
            "failed": sum(r.get("status") != "ok" for r in runs),
            "best": sweep.get("best") or "–",
            "html": f"{sweep['_dir']}/{sweep['html']}" if sweep.get("html") else ""}


def write_index(reports_root: str | Path) -> Path:
    """Rebuild `reports_root/index.html` from every run's summary (and every sweep's record).

    Rendered with jinja2 from `templates/index.html.j2`; inline CSS only, so the page opens
    offline. Returns its path.
    """
    import jinja2

    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    runs = [_run_view(s) for s in read_summaries(reports_root)]
    _mark_best(runs)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                                     autoescape=True, trim_blocks=False)
    page = environment.get_template("index.html.j2").render(
        runs=runs, metrics=HEADLINE_METRICS,
        sweeps=[_sweep_view(s) for s in read_sweeps(reports_root)])
    path = reports_root / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
