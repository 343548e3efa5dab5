"""Executing and rendering notebooks: the kernel, papermill, nbconvert, output stripping.

The pipeline (`twotower_utils.pipeline.runner`) strings these together; they know nothing of stages
or runs. papermill and nbconvert are imported inside the functions, so importing this module
stays cheap.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["KERNEL_NAME", "StageError", "ensure_kernel", "notebook_parameters",
           "execute_notebook", "html_exporter", "render_html", "strip_outputs"]

KERNEL_NAME = "twotower"


class StageError(RuntimeError):
    """A notebook failed; `notebook`, `cell` (1-based position), `exec_count`, `error`."""

    def __init__(self, notebook: str, cell: int | None, exec_count: int | None, error: str,
                 output: Path):
        self.notebook, self.cell, self.exec_count = notebook, cell, exec_count
        self.error, self.output = error, output
        where = f"cell {cell}" if cell else "start-up"
        if exec_count:
            where += f" (In [{exec_count}])"
        super().__init__(f"notebook {notebook} failed at {where}: {error}")


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Register (or refresh) a Jupyter kernel that runs this interpreter; returns its name.

    The kernelspec goes into `sys.prefix` (the project's .venv), with this interpreter's
    absolute path, so papermill and JupyterLab started from the venv run the venv's Python
    whatever `python` means on the PATH.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=name, prefix=sys.prefix,
            display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (twotower)")
    spec = KernelSpecManager().get_kernel_spec(name)
    if Path(spec.argv[0]) != Path(sys.executable):
        # A kernelspec of the same name in a user or system directory takes precedence.
        raise RuntimeError(
            f"kernel {name!r} at {spec.resource_dir} runs {spec.argv[0]}, not {sys.executable}; "
            f"remove it (jupyter kernelspec remove {name}) or pass another kernel name"
        )
    return name


def notebook_parameters(notebook: Path) -> list[str]:
    """Names declared in a notebook's `parameters` cell."""
    import papermill

    return list(papermill.inspect_notebook(str(notebook)))


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any],
                     kernel_name: str = KERNEL_NAME, cell_timeout: int | None = 600,
                     log_output: bool = False, kernel_log: Path | None = None) -> None:
    """Execute `notebook` into `output` with papermill; raise `StageError` on any failure.

    Takes the parameters to inject, the kernel, a per-cell timeout in seconds (None: none),
    whether to echo cell output to the papermill logger, and a file for the kernel process's own
    stdout/stderr (None: inherit the terminal). The executed notebook (with the error, if
    any) is always written to `output`. The kernel's working directory is the notebook's
    directory, as in JupyterLab.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    if kernel_log is not None:
        with open(kernel_log, "a") as log:
            log.write(f"--- kernel of {notebook.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=kernel_name,
            language="python", cwd=str(notebook.parent), progress_bar=False,
            log_output=log_output, execution_timeout=cell_timeout,
            request_save_on_cell_execute=True,
            kernel_manager_class=_kernel_manager(kernel_log),
        )
    except PapermillExecutionError as err:
        raise StageError(notebook.name, _cell_position(output, err.exec_count), err.exec_count,
                         f"{err.ename}: {err.evalue}", output) from None
    except Exception as err:  # timeouts, a dead kernel, a kernel that never started
        exec_count = _last_started_cell(output)
        raise StageError(notebook.name, _cell_position(output, exec_count), exec_count,
                         f"{type(err).__name__}: {err}".strip(), output) from None


def _kernel_manager(log_path: Path | None):
    """A kernel manager class: local sockets instead of TCP (POSIX), kernel output to a file.

    Over TCP every kernel warns that traffic is unencrypted (and any local user could
    connect); unix-domain sockets are private to the user. The kernel process's own stdout
    and stderr (TensorFlow's C++ start-up lines, shutdown notices) go to `log_path` rather
    than the terminal, so the pipeline prints only its progress; cell output is unaffected.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class PipelineKernelManager(AsyncKernelManager):
        if os.name == "posix":
            @default("transport")
            def _transport_default(self):
                return "ipc"

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log_path is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(log_path, "ab") as log:
                # The child keeps its own copy of the descriptor; ours can close after launch.
                kw["stdout"] = kw["stderr"] = log
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return PipelineKernelManager


def _read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except Exception:  # a notebook that was never written: nothing to point at
        return None


def _cell_position(path: Path, exec_count: int | None) -> int | None:
    """1-based position (markdown included) of the cell with `exec_count` in `path`."""
    notebook = _read_notebook(path)
    if notebook is None or exec_count is None:
        return None
    for position, cell in enumerate(notebook.cells, start=1):
        if cell.get("execution_count") == exec_count:
            return position
    return None


def _last_started_cell(path: Path) -> int | None:
    notebook = _read_notebook(path)
    if notebook is None:
        return None
    counts = [c.get("execution_count") for c in notebook.cells if c.cell_type == "code"]
    started = [c for c in counts if c is not None]
    return max(started) if started else None


TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "reports" / "templates"


def html_exporter(hide_code: bool = False):
    """An nbconvert HTMLExporter for the project's offline template (no CDN scripts).

    Images, markdown attachments and CSS are embedded, so the page looks the same with the
    network off; `hide_code` leaves out code cells and prompts (the shared variant).
    """
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES_DIR)],
                        embed_images=True, exclude_input=hide_code,
                        exclude_input_prompt=hide_code, exclude_output_prompt=hide_code)


def render_html(notebook: Path, root: Path | None = None) -> tuple[Path, Path]:
    """Render `notebook` to `<name>.html` (full) and `<name>.noinput.html` (for sharing).

    Both stand alone offline and show paths relative to `root` (default: the project
    directory above the notebook, found by its config.json). The shared variant also drops
    code, stderr output (library warnings) and tracebacks (see `sharing.share_ready`).
    Returns both paths.
    """
    import nbformat

    from twotower_utils.reports.sharing import project_root_of, redact_outputs, share_ready

    content = nbformat.read(str(notebook), as_version=4)
    root = root if root is not None else project_root_of(notebook)
    resources = {"metadata": {"name": notebook.stem.replace("_", " ")}}
    paths = []
    for suffix, hide_code in ((".html", False), (".noinput.html", True)):
        shown = share_ready(content, root) if hide_code else redact_outputs(content, root)
        body, _ = html_exporter(hide_code).from_notebook_node(shown, resources=dict(resources))
        path = notebook.with_name(notebook.stem + suffix)
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def strip_outputs(paths: list[Path]) -> list[Path]:
    """Remove outputs and execution counts from notebooks in place; returns those changed."""
    import nbformat

    changed = []
    for path in paths:
        notebook = nbformat.read(str(path), as_version=4)
        dirty = False
        for cell in notebook.cells:
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                cell.outputs, cell.execution_count, dirty = [], None, True
        if dirty:
            nbformat.write(notebook, str(path))
            changed.append(path)
    return changed
