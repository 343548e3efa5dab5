"""Making an executed notebook fit to send: no library chatter, no stack noise, no local paths.

The full HTML report is for whoever ran the notebook; the `.noinput` one is mailed to people
who never will. `share_ready` rewrites a notebook's outputs for the latter: stderr streams
(TensorFlow's warnings, CUDA's `cuInit` message, absl logging, Python warnings) and the same
library lines where they reach stdout are dropped,
a traceback becomes its one-line error, and absolute paths become paths relative to the
project root (or `~`, or `…/<last part>` for paths elsewhere on the machine). `redact_paths`
is applied to every report, full ones included, so no HTML names the machine's directories.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

__all__ = ["project_root_of", "redact_paths", "redact_outputs", "drop_library_noise",
           "share_ready"]

# An absolute POSIX path of two or more parts, not part of a URL (`https://a/b`) or of a
# longer word; the parts are the characters file names here use.
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")
_TEXT_MIMES = ("text/plain", "text/html", "text/markdown")
# Library log lines that also reach stdout (a logging handler on stdout passes on what
# TensorFlow logs): Python logging's "LEVEL:tensorflow:", absl's "W0102 10:00:00.1 ...",
# TensorFlow's C++ "2026-01-02 10:00:00.123: E external/...", and Python's warnings
# ("file.py:12: UserWarning: ...", followed by the indented source line).
_NOISE = re.compile(
    r"^(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):(?:tensorflow|absl|h5py|keras)\b"
    r"|[IWEF]\d{4} \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|\S+:\d+: \w*Warning: )")


def project_root_of(path: str | Path) -> Path | None:
    """The nearest directory above `path` holding a `config.json` (the project), or None."""
    for parent in Path(path).resolve().parents:
        if (parent / "config.json").is_file():
            return parent
    return None


def redact_paths(text: str, root: str | Path | None = None) -> str:
    """`text` with the machine's absolute paths replaced.

    Paths under `root` become relative to it (`reports/run/x.html`), paths under the home
    directory start with `~`, any other absolute path of two or more parts shows only its
    last part (`…/ml-100k`). Takes the text and the project root; returns the new text.
    """
    bases = []
    if root is not None:
        root = Path(root)
        bases += sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    for base in bases:
        text = re.sub(re.escape(base) + r"(/|\b)", "", text)
    home = str(Path.home())
    if home not in ("/", ""):
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)

    def shorten(match: re.Match) -> str:
        parts = [p for p in match.group(0).split("/") if p]
        return "…/" + parts[-1] if parts else match.group(0)

    return _ABSOLUTE.sub(shorten, text)


def drop_library_noise(text: str) -> str:
    """`text` without the library log and warning lines `_NOISE` matches (and the indented
    source line Python prints under a warning)."""
    kept, skip_source = [], False
    for line in text.splitlines(keepends=True):
        if _NOISE.match(line):
            skip_source = bool(re.match(r"^\S+:\d+: \w*Warning: ", line))
            continue
        if skip_source and line.startswith("  "):
            skip_source = False
            continue
        skip_source = False
        kept.append(line)
    return "".join(kept)


def _redact_output(output, root) -> None:
    if "text" in output:
        output["text"] = redact_paths("".join(output["text"]), root)
    if "traceback" in output:
        output["traceback"] = [redact_paths(line, root) for line in output["traceback"]]
    for mime in _TEXT_MIMES:
        if mime in output.get("data", {}):
            output["data"][mime] = redact_paths("".join(output["data"][mime]), root)


def redact_outputs(notebook, root: str | Path | None):
    """A copy of `notebook` whose cell sources and text outputs carry no absolute paths."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        cell.source = redact_paths(cell.source, root)
        for output in cell.get("outputs", []):
            _redact_output(output, root)
    return notebook


def share_ready(notebook, root: str | Path | None):
    """A copy of `notebook` for the shared report: stderr dropped, errors one line, no paths.

    Takes an nbformat notebook and the project root; the notebook itself is not changed.
    """
    from nbformat.v4 import new_output

    notebook = redact_outputs(notebook, root)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.get("output_type") == "stream":
                if output.get("name") == "stderr":
                    continue  # library warnings and C++ logs: noise to a reader of the report
                output["text"] = drop_library_noise(output["text"])
                if not output["text"]:
                    continue
            if output.get("output_type") == "error":
                message = redact_paths(f"{output.get('ename')}: {output.get('evalue')}", root)
                output = new_output("stream", name="stdout",
                                    text=f"This cell failed: {message}\n")
            kept.append(output)
        cell.outputs = kept
    return notebook
