"""How a pipeline run ends when it is stopped: Ctrl-C, SIGTERM or a kernel that died.

`SignalsAsInterrupts` turns SIGINT/SIGTERM into a KeyboardInterrupt naming the signal, so the
pipeline's `finally` still writes the run's summary and the index; `is_interruption` tells a
stopped or dead kernel from a failing cell; `mark_interrupted` records the stage and how to
continue; `PipelineInterrupted` carries the one-line hint the CLI prints instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal

from twotower_utils.pipeline.nbtools import StageError

__all__ = ["PipelineInterrupted", "SignalsAsInterrupts", "is_interruption", "mark_interrupted",
           "quiet_orphaned_kernel_errors"]


class PipelineInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT/SIGTERM or a dead kernel; its summary says `interrupted`."""

    def __init__(self, run_id: str, stage: str, reason: str):
        super().__init__(reason)
        self.run_id, self.stage, self.reason = run_id, stage, reason

    def hint(self) -> str:
        """One line: what happened and the command that continues the run."""
        return (f"run {self.run_id} interrupted during {self.stage} ({self.reason}); "
                f"continue it with: make run ARGS=\"--from-stage {self.stage} "
                f"--run-id {self.run_id}\"")


def is_interruption(err: StageError) -> bool:
    """A cell stopped by Ctrl-C (the kernel shares the terminal's SIGINT) or a kernel that
    died (killed, out of memory) is an interruption to continue, not a bug in the stage."""
    return err.error.startswith(("KeyboardInterrupt", "DeadKernelError"))


class _DropDeadKernelTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for nbclient's DeadKernelError."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "DeadKernelError"


def quiet_orphaned_kernel_errors() -> None:
    """Keep a dead kernel's orphaned nbclient task from printing a traceback at exit.

    When Ctrl-C stops the pipeline and its kernel together, nbclient's pending task ends in
    DeadKernelError after the runner has already reported the stage as interrupted, and
    asyncio logs it as "Task exception was never retrieved" with a full traceback: noise
    after the one-line hint. Only that error is dropped; every other asyncio message stays.
    """
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropDeadKernelTasks) for f in logger.filters):
        logger.addFilter(_DropDeadKernelTasks())


def mark_interrupted(summary: dict, record: dict, run_id: str, reason: str) -> None:
    """Set the run's and the stage's status to `interrupted` and record how to continue."""
    summary["status"] = record["status"] = "interrupted"
    summary["interrupted"] = {"stage": record["name"], "reason": reason,
                              "continue": f"--from-stage {record['name']} --run-id {run_id}"}


class SignalsAsInterrupts:
    """Within the block, SIGTERM (and SIGINT) raise KeyboardInterrupt naming the signal, so
    a killed pipeline still writes its summary; the previous handlers come back after."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.previous = {}
        for number in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave them alone
                self.previous[number] = signal.signal(number, self._raise)
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False

    @staticmethod
    def _raise(number, _frame):
        # Ignore repeats while the summary is being written.
        for again in SignalsAsInterrupts.SIGNALS:
            signal.signal(again, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(number).name)
