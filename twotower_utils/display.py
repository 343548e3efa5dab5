"""`Note`: a sentence a notebook cell shows in place of a table or figure with nothing in it.

A report section whose data is absent (no user features, no timestamps) should say so in one
line rather than show an empty figure; returning a `Note` keeps the notebook cell free of
branching (the notebooks hold no logic) and renders as Markdown in JupyterLab and in HTML.
"""

from __future__ import annotations

__all__ = ["Note"]


class Note(str):
    """A plain sentence, shown in italics by Jupyter; otherwise an ordinary `str`."""

    def _repr_markdown_(self) -> str:
        return f"*{self}*"
