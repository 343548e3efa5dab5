"""Logging for the package: one logger tree under `twotower_utils`, one handler on demand.

Library code never configures logging itself (that belongs to whoever runs it) and takes no
`log=` callables: it logs to `twotower_utils.<module>` loggers, the data stage's decisions to
`twotower_utils.data`. Progress (the data stage, one line per training epoch, the pipeline's
stages) is INFO; what the data stage drops or changes is WARNING. Notebooks and CLIs call
`configure_logging()` once to show those messages as plain lines; without it, only warnings
reach stderr (Python's last-resort handler), so a script or test is quiet by default:

    from twotower_utils.logs import configure_logging
    configure_logging()            # INFO and above, to stdout
"""

from __future__ import annotations

import logging
import sys
from typing import IO

__all__ = ["DATA_LOGGER", "configure_logging", "report"]

PACKAGE_LOGGER = "twotower_utils"
DATA_LOGGER = "twotower_utils.data"  # everything the data stage drops, changes or decides
_MARK = "_twotower_handler"  # attribute that tells our handler apart from anyone else's


def configure_logging(level: int | str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Show the package's log messages as plain lines; safe to call any number of times.

    Takes a level (name such as "INFO" or a `logging` constant) and the stream to write to
    (default `sys.stdout`, looked up at call time so a notebook kernel's stream is used:
    stdout, like the project's other progress lines, because the shareable `.noinput.html`
    reports leave stderr out).
    Attaches one `StreamHandler` with the format `%(message)s` to the `twotower_utils`
    logger and sets that logger's level; a second call updates the same handler instead of
    adding another. The package's records then stop at that logger (`propagate = False`):
    TensorFlow's absl logging puts a stderr handler on the root logger the first time it
    logs (during a checkpoint save), which would otherwise print every line a second time.
    Returns the handler.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"logging level {level!r}: expected DEBUG, INFO, WARNING or ERROR")
        level = resolved
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = next((h for h in logger.handlers if getattr(h, _MARK, False)), None)
    target = stream if stream is not None else sys.stdout
    if handler is None:
        handler = logging.StreamHandler(target)
        setattr(handler, _MARK, True)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    else:
        handler.setStream(target)
    handler.setLevel(level)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def report(notes: list[str] | None, message: str, level: int = logging.WARNING) -> str:
    """Log `message` on the data logger at `level` and append it to `notes` (if given).

    The data stage keeps what it drops or changes in the dataset's notes (they reach
    `stats.json` and the run summary) and logs it at the same time (it reaches the terminal
    or notebook). Returns the message.
    """
    logging.getLogger(DATA_LOGGER).log(level, message)
    if notes is not None:
        notes.append(message)
    return message
