"""`captured_log()`: the package's log messages of a block, as a list of lines.

pytest's `caplog` is function-scoped; this also works inside module-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def captured_log(name: str = "twotower_utils") -> Iterator[list[str]]:
    """Collect the INFO-and-above messages of logger `name` (and its children) while the
    block runs; yields the list they are appended to (it stays readable afterwards)."""
    logger = logging.getLogger(name)
    lines: list[str] = []
    handler, level = _ListHandler(lines), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
