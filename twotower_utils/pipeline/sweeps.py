"""Parameter sweeps: the pipeline once per parameter set of a grid, then one comparison report.

    python -m twotower_utils.pipeline --sweep sweeps/example.yaml --fast
    make sweep ARGS="sweeps/example.yaml --fast"

A grid file (YAML) holds `grid:` (every combination of the listed values) or `runs:` (named
parameter sets), optionally `base:` (settings of every run), `stages:` (default: all five),
`name:` (default: the file's name) and `metric:` (the validation metric that picks the best
setting, default `ndcg@10`). Keys are the pipeline's parameters: dotted config keys
(`training.learning_rate`) or UPPER_CASE notebook parameters (`FAST`).

Each point runs through `pipeline.run_pipeline` as run `<sweep id>-<point>`, with its own
reports and row in `reports/index.html`. Points with the same data settings share the
processed data (the pipeline keys it by those settings) and the EDA: only the first of them
runs `01_eda`, the others link its report. A point that fails (a notebook error, a bad value)
is recorded with its error and the others still run. The sweep's record
(`reports/sweeps/<sweep id>/sweep.json`) and its report (`sweep_report.ipynb`, executed and
rendered like the stage notebooks: a table of validation and test metrics per run, a plot
per lever, the best setting by validation, links to every run's reports) are written at the
end, and also after every point, so an interrupted sweep still shows what it finished.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from twotower_utils.display import Note
from twotower_utils.io import write_json

__all__ = ["SweepPoint", "Sweep", "load_sweep", "run_sweep", "read_sweep", "comparison_table",
           "best_setting", "plot_levers", "run_links"]

logger = logging.getLogger(__name__)

REPORT_NOTEBOOK = "sweep_report.ipynb"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SweepPoint:
    """One parameter set: its name (part of the run id) and its lever values."""

    name: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    """A parsed grid file: name, points, the levers varied, shared settings, stages, metric."""

    name: str
    points: list[SweepPoint]
    levers: list[str]
    base: dict[str, Any]
    stages: list[str] | None
    metric: str


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-._") or "point"


def _point_name(settings: Mapping[str, Any]) -> str:
    """`learning_rate-0.01_embedding_dim-8`: the last part of each key with its value."""
    return _slug("_".join(f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in settings.items()))


def load_sweep(source: str | Path | Mapping) -> Sweep:
    """Parse a grid file (or an already loaded mapping) into a `Sweep`.

    Raises ValueError naming the problem: neither or both of `grid` and `runs`, an empty
    list of values, a point that is not a mapping, duplicate names.
    """
    path = Path(source) if not isinstance(source, Mapping) else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"--sweep {path}: no such file")
    spec = dict(source) if path is None else yaml.safe_load(path.read_text()) or {}
    where = f"sweep {path}" if path else "sweep"
    unknown = sorted(set(spec) - {"name", "grid", "runs", "base", "stages", "metric"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected name, grid or runs, "
                         "base, stages, metric")
    if ("grid" in spec) == ("runs" in spec):
        raise ValueError(f"{where}: give either `grid:` (values to combine) or `runs:` "
                         "(named parameter sets)")
    if "grid" in spec:
        grid = spec["grid"] or {}
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"{where}: `grid:` must map each key to a list of values")
        values = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
        empty = [k for k, v in values.items() if not v]
        if empty:
            raise ValueError(f"{where}: no values for {empty}")
        points = [SweepPoint(_point_name(dict(zip(values, combo, strict=True))),
                             dict(zip(values, combo, strict=True)))
                  for combo in itertools.product(*values.values())]
        levers = list(values)
    else:
        runs = spec["runs"] or {}
        if isinstance(runs, list):  # a list of sets: named after their values
            runs = {_point_name(r) if isinstance(r, Mapping) else str(r): r for r in runs}
        bad = [name for name, settings in runs.items() if not isinstance(settings, Mapping)]
        if not runs or bad:
            raise ValueError(f"{where}: `runs:` must map names to parameter sets; bad: {bad}")
        points = [SweepPoint(_slug(str(name)), dict(settings)) for name, settings in runs.items()]
        levers = list(dict.fromkeys(k for p in points for k in p.settings))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two points share a name: {names}")
    default_name = path.stem if path else "sweep"
    return Sweep(_slug(str(spec.get("name") or default_name)), points, levers,
                 dict(spec.get("base") or {}), spec.get("stages"),
                 str(spec.get("metric") or "ndcg@10"))


def _split(settings: Mapping[str, Any]) -> tuple[dict, dict]:
    """(config overrides, notebook parameters) of flat settings, as the CLI splits them."""
    from twotower_utils.pipeline.runner import _PARAMETER

    params = {k: v for k, v in settings.items() if _PARAMETER.match(str(k))}
    return {k: v for k, v in settings.items() if k not in params}, params


def _data_key(overrides: Mapping[str, Any]) -> str:
    """The settings that shape the data a run explores (`data.*`, `model.use_*`), as text."""
    shaping = {k: v for k, v in overrides.items()
               if k == "data" or k.startswith(("data.", "model.use_"))}
    return json.dumps(shaping, sort_keys=True, default=str)


def _stages_of(stages: list[str] | None) -> list[str]:
    from twotower_utils.pipeline.runner import select_stages

    return select_stages(stages or None)


def _outcome(reports_root: Path, run_id: str, metric: str) -> dict[str, Any]:
    """Validation (best epoch) and test metrics and report links of a finished run."""
    summary_path = reports_root / run_id / "summary.json"
    if not summary_path.is_file():
        return {"validation": {}, "test": {}, "reports": []}
    summary = json.loads(summary_path.read_text())
    training = (summary.get("results") or {}).get("training") or {}
    history = training.get("history") or []
    best = next((row for row in history if row.get("epoch") == training.get("best_epoch")), {})
    validation = {k.removeprefix("val_"): v for k, v in best.items()
                  if k.startswith("val_") and k != "val_loss"}
    test = (summary.get("metrics") or {}).get("two_tower", {})
    reports = [{"name": s["name"], "html": f"{run_id}/{s['html']}",
                "html_noinput": f"{run_id}/{s.get('html_noinput', s['html'])}"}
               for s in summary.get("stages", []) if s.get("html")]
    return {"validation": validation, "test": dict(test), "reports": reports}


def run_sweep(source: str | Path | Mapping, config_path: str | Path = "config.json",
              overrides: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              sweep_id: str | None = None, notebooks_dir: str | Path | None = None,
              **pipeline_options) -> dict[str, Any]:
    """Run every point of a sweep, then write its record, comparison report and the index.

    Takes the grid file (or mapping), the config, settings shared by every run (command-line
    overrides and parameters; the grid's `base` and each point's values win over them), the
    sweep id (default `<name>-<yyyymmdd-hhmmss>`), the notebooks directory and further
    `run_pipeline` options (cell_timeout, render, log_output, kernel_name). Returns the
    record (see `read_sweep`); a failed point is recorded there, never raised.
    """
    from twotower_utils.pipeline.nbtools import StageError, ensure_kernel
    from twotower_utils.pipeline.runner import run_pipeline
    from twotower_utils.pipeline.runs import check_run_id, start_run

    sweep = load_sweep(source)
    base_overrides, base_params = _split(sweep.base)
    shared = {**dict(overrides or {}), **base_overrides}
    shared_params = {**dict(params or {}), **base_params}
    sweep_id = check_run_id(sweep_id or f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    probe = start_run(config_path, shared, "probe", bool(shared_params.get("FAST")),
                      create=False)
    reports_root = probe.config.path("reports_dir")
    sweep_dir = reports_root / "sweeps" / sweep_id
    pipeline_options["kernel_name"] = pipeline_options.get("kernel_name") or ensure_kernel()
    record = {"name": sweep_id, "sweep": sweep.name, "levers": sweep.levers,
              "metric": sweep.metric, "stages": sweep.stages,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "base": sweep.base,
              "overrides": shared, "parameters": shared_params, "runs": []}
    eda_runs: dict[str, str] = {}  # data settings -> the run whose EDA report they share
    for position, point in enumerate(sweep.points, start=1):
        run_id = f"{sweep_id}-{point.name}"[:100]
        point_overrides, point_params = _split(point.settings)
        logger.info(f"=== sweep {sweep_id}: point {position}/{len(sweep.points)} {point.name}")
        entry = {"name": point.name, "run_id": run_id, "settings": point.settings,
                 "status": "running"}
        record["runs"].append(entry)
        data = _data_key({**shared, **point_overrides})
        stages = _stages_of(sweep.stages)
        if "eda" in stages and data in eda_runs:
            # The same data explored again would be the same report: link the first one.
            stages, entry["eda_from"] = [s for s in stages if s != "eda"], eda_runs[data]
        t0 = time.perf_counter()
        try:
            run_pipeline(config_path, {**shared, **point_overrides},
                         {**shared_params, **point_params}, run_id=run_id, stages=stages,
                         notebooks_dir=notebooks_dir, **pipeline_options)
            entry["status"] = "ok"
        except StageError as err:
            entry.update(status="failed", failure=str(err))
        except (ValueError, FileNotFoundError) as err:  # a bad value: no notebook ran
            entry.update(status="failed", failure=f"{type(err).__name__}: {err}")
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            if entry.get("failure"):
                logger.warning(f"point {point.name} failed (the sweep goes on): {entry['failure']}")
            entry.update(_outcome(reports_root, run_id, sweep.metric))
            if entry.get("eda_from"):
                shared_eda = _outcome(reports_root, entry["eda_from"], sweep.metric)["reports"]
                entry["reports"] = [r for r in shared_eda if r["name"] == "eda"] + entry["reports"]
            elif any(r["name"] == "eda" for r in entry["reports"]):
                eda_runs.setdefault(data, run_id)
            _write_record(sweep_dir, record)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["best"] = _best_name(record)
    _write_record(sweep_dir, record)
    _write_report(sweep_dir, record, config_path, shared, shared_params, notebooks_dir,
                  pipeline_options)
    return record


def _write_record(sweep_dir: Path, record: dict[str, Any]) -> None:
    from twotower_utils.reports.index import write_index

    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / "sweep.json", record)
    write_index(sweep_dir.parents[1])


def _write_report(sweep_dir, record, config_path, overrides, params, notebooks_dir,
                  options) -> None:
    """Execute and render the comparison notebook; a failure is logged, the record stays."""
    from twotower_utils.pipeline.nbtools import StageError, execute_notebook, render_html
    from twotower_utils.pipeline.runner import NOTEBOOKS_DIR

    notebook = Path(notebooks_dir or NOTEBOOKS_DIR) / REPORT_NOTEBOOK
    if not notebook.is_file():
        notebook = NOTEBOOKS_DIR / REPORT_NOTEBOOK
    output = sweep_dir / REPORT_NOTEBOOK
    values = {"CONFIG_PATH": str(Path(config_path).resolve()), "OVERRIDES": dict(overrides),
              "RUN_ID": record["name"], "FAST": bool(params.get("FAST"))}
    try:
        execute_notebook(notebook, output, values, options["kernel_name"],
                         options.get("cell_timeout", 600), options.get("log_output", False),
                         kernel_log=sweep_dir / "kernel.log")
    except StageError as err:
        logger.warning(f"sweep report failed: {err}")
    if output.is_file() and options.get("render", True):
        full, _ = render_html(output)
        record["html"] = full.name
        _write_record(sweep_dir, record)
        logger.info(f"sweep report: {full}")


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """The record of a sweep: name, levers, metric, and per run its settings, status,
    failure, validation and test metrics and report links (paths relative to reports/)."""
    return json.loads((Path(sweep_dir) / "sweep.json").read_text())


def comparison_table(record: Mapping[str, Any],
                     metrics: tuple[str, ...] = ("ndcg@10", "recall@10")) -> pd.DataFrame:
    """One row per run: its lever values, status, validation and test metrics, seconds.

    Columns `validation <metric>` and `test <metric>`; failed runs keep their row, with the
    error in `failure` and no metrics. Indexed by point name.
    """
    rows = []
    for run in record["runs"]:
        row = {"run": run["name"], **{k: str(run["settings"].get(k, "")) for k in
                                      record["levers"]}, "status": run["status"]}
        for split in ("validation", "test"):
            for metric in metrics:
                row[f"{split} {metric}"] = (run.get(split) or {}).get(metric)
        row["seconds"] = run.get("seconds")
        row["failure"] = (run.get("failure") or "")[:200]
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def _best_name(record: Mapping[str, Any]) -> str | None:
    scored = [(run["validation"][record["metric"]], run["name"]) for run in record["runs"]
              if run["status"] == "ok" and record["metric"] in (run.get("validation") or {})]
    return max(scored)[1] if scored else None


def best_setting(record: Mapping[str, Any]) -> Note:
    """One sentence: the best run by the validation metric, its settings and test value."""
    best = _best_name(record)
    if best is None:
        return Note("No run finished with a validation metric, so there is no best setting.")
    run = next(r for r in record["runs"] if r["name"] == best)
    metric = record["metric"]
    settings = ", ".join(f"{k} = {v}" for k, v in run["settings"].items())
    test = (run.get("test") or {}).get(metric)
    return Note(f"Best by validation {metric}: {best} ({settings}), validation "
                f"{run['validation'][metric]:.4f}"
                + (f", test {test:.4f}" if test is not None else "") + ".")


def plot_levers(table: pd.DataFrame, levers: list[str], metric: str = "ndcg@10"):
    """One panel per lever: the validation metric against the lever's values (seaborn).

    With two levers, each panel's lines are the other lever's values; with more, points are
    means over the other levers. Failed runs are left out. Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    column = f"validation {metric}"
    done = table[table["status"] == "ok"].dropna(subset=[column])
    fig, axes = plt.subplots(1, len(levers), figsize=(4.6 * len(levers), 3.6),
                             layout="constrained", squeeze=False)
    fig.suptitle(f"Validation {metric} per lever", fontsize=13, fontweight="bold")
    for ax, lever in zip(axes.ravel(), levers, strict=True):
        others = [other for other in levers if other != lever]
        hue = others[0] if len(others) == 1 else None
        sns.pointplot(done, x=lever, y=column, hue=hue, ax=ax, palette="tab10" if hue else None,
                      errorbar=None)
        ax.set(title=lever, xlabel=lever, ylabel=column)
        if ax.get_legend() is not None:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                            fontsize=8, title=hue)
    plt.close(fig)
    return fig


def run_links(record: Mapping[str, Any]):
    """An HTML table of links to every run's reports (relative to the sweep's folder)."""
    from html import escape

    from IPython.display import HTML

    rows = []
    for run in record["runs"]:
        links = " · ".join(f'<a href="../../{escape(r["html_noinput"])}">{escape(r["name"])}</a>'
                           for r in run.get("reports", [])) or "–"
        status = escape(run["status"])
        if run["status"] != "ok":
            status = f'<b style="color:#cf222e">{status}</b>'
        rows.append(f"<tr><td>{escape(run['name'])}</td><td>{status}</td><td>{links}</td></tr>")
    return HTML("<table><thead><tr><th>run</th><th>status</th><th>reports (no code)</th>"
                "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
