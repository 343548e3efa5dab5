"""Run the five notebooks headless with papermill, render HTML reports, summarise the run.

    python -m twotower_utils.pipeline                       # all stages, config.json as is
    python -m twotower_utils.pipeline -p training.epochs 3 -p FAST true
    python -m twotower_utils.pipeline --parameters-file params.yaml --run-id my-run
    python -m twotower_utils.pipeline --from-stage evaluation   # re-run 04 and 05 of the last run
    python -m twotower_utils.pipeline --install-kernel          # register the kernel for Jupyter

Parameters: `-p KEY VALUE` (VALUE read by `config.parse_value`: JSON, else YAML, else the text)
and the keys of a YAML file. UPPER_CASE keys are notebook parameters (FAST, or one a notebook
declares in its `parameters` cell); any other key is a config override (dotted path, e.g.
training.epochs), validated against config.json before any notebook starts. Each run writes,
under `reports/<run_id>/`: the executed notebooks, `<notebook>.html` (full) and
`<notebook>.noinput.html` (no code, for sharing), `results/*.json` (what the notebooks
recorded), `summary.json` and `kernel.log` (the kernel processes' own start-up and shutdown
messages, kept out of the terminal); then `reports/index.html` is rebuilt. A failing cell stops
the run: the notebook, cell and error are printed, the executed notebook is kept, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from twotower_utils.config import parse_overrides
from twotower_utils.logs import configure_logging
from twotower_utils.pipeline.interrupts import (
    PipelineInterrupted,
    SignalsAsInterrupts,
    is_interruption,
    mark_interrupted,
    quiet_orphaned_kernel_errors,
)
from twotower_utils.pipeline.nbtools import (
    KERNEL_NAME,
    StageError,
    ensure_kernel,
    execute_notebook,
    notebook_parameters,
    render_html,
    strip_outputs,
)
from twotower_utils.pipeline.runs import QUICK_OVERRIDES, check_run_id, new_run_id, start_run
from twotower_utils.reports.index import environment, write_index, write_summary

__all__ = ["STAGES", "PipelineInterrupted", "StageError", "select_stages", "parse_parameters",
           "run_pipeline", "main"]

logger = logging.getLogger(__name__)

STAGES = (
    ("eda", "01_eda.ipynb"),
    ("preprocessing", "02_preprocessing.ipynb"),
    ("training", "03_training.ipynb"),
    ("evaluation", "04_evaluation.ipynb"),
    ("embeddings", "05_embeddings.ipynb"),
)
NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
COMMON_PARAMETERS = ("CONFIG_PATH", "OVERRIDES", "RUN_ID", "FAST")
_PARAMETER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def select_stages(stages: list[str] | None = None, from_stage: str | None = None) -> list[str]:
    """Stage names to run, in pipeline order.

    Takes names ("training"), numbers ("3", "03") or notebook names ("03_training") in
    `stages`, or one `from_stage` to run it and every later stage; neither means all.
    Raises ValueError naming the bad value and the choices.
    """
    names = [name for name, _ in STAGES]

    def resolve(value: str, option: str) -> str:
        text = str(value).strip().removesuffix(".ipynb")
        for i, (name, notebook) in enumerate(STAGES, start=1):
            if text in (name, str(i), f"{i:02d}", notebook.removesuffix(".ipynb")):
                return name
        raise ValueError(f"{option} {value!r}: expected one of {', '.join(names)} (or 1-5)")

    if stages and from_stage:
        raise ValueError("--stage and --from-stage cannot be combined; pick one")
    if from_stage:
        return names[names.index(resolve(from_stage, "--from-stage")):]
    if stages:
        chosen = {resolve(s, "--stage") for s in stages}
        return [name for name in names if name in chosen]
    return names


def parse_parameters(pairs: list[tuple[str, str]] | None = None,
                     parameters_file: str | Path | None = None) -> tuple[dict, dict]:
    """Split `-p KEY VALUE` pairs and a YAML file into (config overrides, notebook parameters).

    UPPER_CASE keys are notebook parameters, other keys config overrides (file first, then
    the pairs, so the command line wins). Values from pairs are read by
    `config.parse_overrides` (JSON, else YAML, else the text). Returns the two dicts; raises
    ValueError (a `ConfigError` naming the key for a value that cannot be parsed).
    """
    overrides: dict[str, Any] = {}
    params: dict[str, Any] = {}
    entries: list[tuple[str, Any]] = []
    if parameters_file is not None:
        path = Path(parameters_file)
        if not path.is_file():
            raise FileNotFoundError(f"--parameters-file {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--parameters-file {path}: expected a mapping of KEY: value")
        entries.extend(loaded.items())
    entries.extend(parse_overrides(pairs).items())
    for key, value in entries:
        if _PARAMETER.match(str(key)):
            params[key] = value
        else:
            overrides[str(key)] = value
    if "OVERRIDES" in params:
        raise ValueError("OVERRIDES cannot be set directly; pass config keys as "
                         "-p section.key value (e.g. -p training.epochs 3)")
    return overrides, params


DEFAULT_CELL_TIMEOUT = 600  # seconds per cell, for the stages other than training


def stage_cell_timeout(stage: str, settings) -> int | None:
    """The cell timeout of `stage`: the one given, else `DEFAULT_CELL_TIMEOUT`, except for
    training, which is not cut short by default (None: no limit)."""
    if settings.cell_timeout is not None:
        return settings.cell_timeout
    return None if stage == "training" else DEFAULT_CELL_TIMEOUT


@dataclass
class _Settings:
    kernel_name: str
    cell_timeout: int | None
    render: bool
    log_output: bool
    notebooks_dir: Path


def run_pipeline(
    config_path: str | Path = "config.json",
    overrides: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
    stages: list[str] | None = None,
    from_stage: str | None = None,
    cell_timeout: int | None = None,
    render: bool = True,
    log_output: bool = False,
    kernel_name: str | None = None,
    notebooks_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the selected notebooks of one run in order and write its summary and the index.

    Takes the config path, config overrides, notebook parameters (UPPER_CASE; FAST among
    them), the run id (default: a new one; with a stage subset, the latest run's), the
    stages (see `select_stages`), a per-cell timeout in seconds (None: `DEFAULT_CELL_TIMEOUT`
    for every stage but training, whose cells run unbounded: a healthy training can take
    as long as its data needs, and it prints a line per epoch), whether to render HTML and
    echo notebook output, the kernel (default: `ensure_kernel()`) and the notebooks
    directory. Progress (one line as each stage starts and ends) is INFO on this module's
    logger (`main` shows it). Returns the summary dict; raises `StageError` after writing
    the summary of a failed run, and ConfigError/ValueError before any notebook runs for bad
    input.
    """
    params = dict(params or {})
    overrides = dict(overrides or {})
    fast = params.pop("FAST", False)
    selected = select_stages(stages, from_stage)
    # Validate config, overrides and FAST up front: a typo should not cost a kernel start.
    probe = start_run(config_path, overrides, run_id or "probe", fast, create=False)
    reports_root = probe.config.path("reports_dir")
    if run_id is None and len(selected) < len(STAGES):
        run_id = _latest_run_id(reports_root)
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    declared = _check_notebook_parameters(notebooks_dir, selected, params)
    settings = _Settings(kernel_name or ensure_kernel(), cell_timeout, render, log_output,
                         notebooks_dir)
    run = start_run(config_path, overrides, check_run_id(run_id) if run_id is not None else
                    new_run_id(probe.dataset, fast), fast)
    if "preprocessing" not in selected and set(selected) & {"training", "evaluation",
                                                              "embeddings"}:
        # Refuse before any kernel starts: these stages would read another run's data.
        run.check_data(model="training" not in selected)
    # TensorFlow's C++ start-up chatter (CPU features, missing CUDA) is noise in a report.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = _previous_summary(run.reports_dir)
    summary = previous | {
        "run_id": run.run_id, "status": "running", "dataset": run.dataset, "fast": fast,
        "started": previous.get("started", time.strftime("%Y-%m-%d %H:%M:%S")),
        "config_path": str(run.config_path),
        "overrides": overrides, "parameters": params, "config": run.config.to_dict(),
        "environment": environment(), "kernel": settings.kernel_name,
    }
    stage_records = {s["name"]: s for s in summary.get("stages", [])}
    timings = dict(summary.get("timings", {}))
    logger.info(f"run {run.run_id}: stages {', '.join(selected)} -> {run.reports_dir}")
    started = time.perf_counter()
    stage = name = selected[0]
    try:
        for position, name in enumerate(selected, start=1):
            notebook = settings.notebooks_dir / dict(STAGES)[name]
            values = {"CONFIG_PATH": str(run.config_path), "OVERRIDES": overrides,
                      "RUN_ID": run.run_id, "FAST": fast}
            if "RESUME" in declared[notebook.name]:
                # Continuing a run past its data stage picks training up at its checkpoint.
                values["RESUME"] = bool(previous) and "preprocessing" not in selected
            values.update({k: v for k, v in params.items() if k in declared[notebook.name]})
            record = {"name": name, "notebook": notebook.name, "status": "running"}
            stage_records[name] = record
            stage = f"[{position}/{len(selected)}] {notebook.name}"
            logger.info(f"{stage} ...")
            t0 = time.perf_counter()
            try:
                execute_notebook(notebook, run.reports_dir / notebook.name, values,
                                 settings.kernel_name, stage_cell_timeout(name, settings),
                                 settings.log_output, kernel_log=run.reports_dir / "kernel.log")
            finally:
                record["seconds"] = timings[name] = round(time.perf_counter() - t0, 2)
                if settings.render and (run.reports_dir / notebook.name).is_file():
                    _render(run.reports_dir / notebook.name, record)
            record["status"] = "ok"
            logger.info(f"{stage} done in {record['seconds']:.1f} s")
        summary["status"] = "ok"
    except StageError as err:
        summary["failure"] = {"notebook": err.notebook, "cell": err.cell,
                              "exec_count": err.exec_count, "message": err.error}
        if not is_interruption(err):
            stage_records[name]["status"] = summary["status"] = "failed"
            logger.info(f"{stage} FAILED")
            raise
        mark_interrupted(summary, stage_records[name], run.run_id, err.error)
        logger.info(f"{stage} INTERRUPTED")
        raise PipelineInterrupted(run.run_id, name, err.error) from None
    except KeyboardInterrupt as err:
        reason = str(err) or "KeyboardInterrupt"
        mark_interrupted(summary, stage_records[name], run.run_id, reason)
        logger.info(f"{stage} INTERRUPTED")
        raise PipelineInterrupted(run.run_id, name, reason) from None
    finally:
        # total = the notebooks' times, also when stages of a run were (re)run separately;
        # this_invocation = wall time of this call, HTML rendering included.
        timings["total"] = round(sum(timings.get(n, 0.0) for n, _ in STAGES), 2)
        timings["this_invocation"] = round(time.perf_counter() - started, 2)
        summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        summary["timings"] = timings
        order = [n for n, _ in STAGES]
        summary["stages"] = sorted(stage_records.values(), key=lambda s: order.index(s["name"]))
        if run.data_record_path.is_file():
            summary["data_fingerprint"] = json.loads(run.data_record_path.read_text())
        path = write_summary(run.reports_dir, summary)
        index = write_index(reports_root)
        logger.info(f"summary: {path}\nindex:   {index}")
    return summary | {"metrics": _read_metrics(path)}


def _render(executed: Path, record: dict[str, Any]) -> None:
    """Render the HTML reports of an executed notebook into `record`; a rendering problem is
    reported but never hides the notebook's own outcome."""
    try:
        full, bare = render_html(executed)
    except Exception as err:  # nbconvert/template trouble must not mask a StageError
        logger.warning(f"(HTML rendering of {executed.name} failed: {type(err).__name__}: "
                       f"{err})")
        return
    record["html"], record["html_noinput"] = full.name, bare.name


def _read_metrics(summary_path: Path) -> dict:
    return json.loads(summary_path.read_text()).get("metrics", {})


def _previous_summary(reports_dir: Path) -> dict[str, Any]:
    """The existing summary of a run being continued (stage subsets), else {}."""
    path = reports_dir / "summary.json"
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    return {k: previous[k] for k in ("stages", "timings", "started") if k in previous}


def _latest_run_id(reports_root: Path) -> str | None:
    from twotower_utils.reports.index import read_summaries

    summaries = read_summaries(reports_root)
    return summaries[0]["_dir"] if summaries else None


def _check_notebook_parameters(notebooks_dir: Path, selected: list[str],
                               params: dict) -> dict[str, list[str]]:
    """Declared parameters of the selected notebooks; ValueError naming any unknown one."""
    declared = {}
    for name in (dict(STAGES)[stage] for stage in selected):
        path = notebooks_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} not found (notebooks_dir={notebooks_dir})")
        declared[name] = notebook_parameters(path)
    known = sorted({p for names in declared.values() for p in names} | set(COMMON_PARAMETERS))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}: the notebooks declare "
                         f"{', '.join(known)}; config keys are lower-case dotted paths")
    return declared


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 a notebook failed, 2 bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m twotower_utils.pipeline",
        description="Run the notebooks with papermill into reports/<run_id>/, render HTML, "
                    "write summary.json and reports/index.html.",
        epilog="KEY in UPPER_CASE is a notebook parameter (e.g. FAST), otherwise a config "
               "override (e.g. training.epochs). Stages: "
               + ", ".join(f"{i} {n}" for i, (n, _) in enumerate(STAGES, start=1)),
    )
    parser.add_argument("--config", default="config.json", help="configuration file")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="a parameter; VALUE read as JSON, else YAML, else the text")
    parser.add_argument("--parameters-file", "-f", help="YAML file of parameters")
    parser.add_argument("--dataset", help="shorthand for -p data.dataset NAME, with that "
                        "dataset's own feature declarations (unless set explicitly)")
    parser.add_argument("--fast", action="store_true", help="shorthand for -p FAST true")
    parser.add_argument("--quick", action="store_true",
                        help="the faster loop: three ensemble members instead of four "
                        "(shorthand for the -p options of QUICK_OVERRIDES in "
                        "twotower_utils/pipeline/runs.py; explicit -p options win)")
    parser.add_argument("--run-id", help="run id (default: a new timestamped id; with "
                        "--stage/--from-stage, the latest run)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    group.add_argument("--from-stage", help="run this stage and the ones after it")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help=f"seconds per cell (default: {DEFAULT_CELL_TIMEOUT}, and no limit "
                        "for the training stage's cells)")
    parser.add_argument("--no-html", action="store_true", help="skip HTML rendering")
    parser.add_argument("--log-output", action="store_true", help="echo notebook output")
    parser.add_argument("--kernel", help=f"Jupyter kernel (default: {KERNEL_NAME}, registered "
                        "for this interpreter on first use)")
    parser.add_argument("--install-kernel", action="store_true",
                        help="register the project's kernel for JupyterLab and exit")
    parser.add_argument("--index", action="store_true", help="rebuild reports/index.html, exit")
    parser.add_argument("--strip", action="store_true",
                        help="strip outputs from notebooks/*.ipynb and exit")
    parser.add_argument("--sweep", metavar="GRID_YAML",
                        help="run once per parameter set of a grid file, then a comparison "
                             "report under reports/sweeps/ (see twotower_utils/pipeline/sweeps.py)")
    args = parser.parse_args(argv)
    try:
        if args.install_kernel:
            print(f"kernel {ensure_kernel()!r} runs {sys.executable}")
            return 0
        if args.strip:
            changed = strip_outputs(sorted(NOTEBOOKS_DIR.glob("*.ipynb")))
            print(f"stripped {len(changed)} notebook(s)")
            return 0
        quiet_orphaned_kernel_errors()
        configure_logging()
        overrides, params = parse_parameters(args.param, args.parameters_file)
        if args.dataset:
            for side in ("data.user_features", "data.item_features"):
                overrides.setdefault(side, None)
            overrides["data.dataset"] = args.dataset
        if args.fast:
            params["FAST"] = True
        if args.quick:
            overrides = {**QUICK_OVERRIDES, **overrides}
        if args.index:
            probe = start_run(args.config, overrides, "index", create=False)
            print(write_index(probe.config.path("reports_dir")))
            return 0
        if args.sweep:  # exit status 1 when any point failed; the others still ran
            from twotower_utils.pipeline.sweeps import run_sweep

            with SignalsAsInterrupts():
                record = run_sweep(args.sweep, args.config, overrides, params, args.run_id,
                                   cell_timeout=args.cell_timeout, render=not args.no_html,
                                   log_output=args.log_output, kernel_name=args.kernel)
            return 0 if all(run["status"] == "ok" for run in record["runs"]) else 1
        with SignalsAsInterrupts():
            run_pipeline(args.config, overrides, params, args.run_id, args.stage,
                         args.from_stage, args.cell_timeout, not args.no_html,
                         args.log_output, args.kernel)
    except PipelineInterrupted as err:
        print(f"\n{err.hint()}", file=sys.stderr)
        return 130
    except StageError as err:
        print(f"\npipeline stopped: {err}", file=sys.stderr)
        print(f"the executed notebook, with the error, is kept at {err.output}"
              + (f" (and {err.output.with_suffix('.html')})"
                 if err.output.with_suffix(".html").is_file() else ""), file=sys.stderr)
        kernel_log = err.output.parent / "kernel.log"
        if kernel_log.is_file() and kernel_log.stat().st_size:
            print(f"messages of the kernel processes: {kernel_log}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
