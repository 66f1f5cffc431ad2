"""The package's one voice: `from llava_lite.log import logger; logger.info("...")`.

`setup()` (called once by the `llava-lite` entry) gives the `llava_lite` logger one handler that writes
to the sys.stdout of the moment (so redirections and pytest's capture see it) on the main process only:
rank 0 under accelerate, torchrun or DeepSpeed, read from RANK / LOCAL_RANK or an already-initialised
accelerate state (never forcing a process group). An info line is the bare message; a warning or an
error is prefixed with its level ("WARNING: ..."). Records still propagate, so an application's own
handlers (and pytest's caplog) see them too. Reports a user asked for (a table, a conversation, a JSON
report) are printed, not logged. Used as a library without `setup()`, the package logs like any other:
through whatever handlers the application configured.
Nothing here imports torch or accelerate.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("llava_lite")


def is_main_process() -> bool:
    """Rank 0 of a launched job, or a process that was not launched as one of several."""
    for key in ("RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").strip().lstrip("-").isdigit():
            return int(os.environ[key]) == 0
    state = sys.modules.get("accelerate.state")  # only an accelerate already in use is asked
    shared = getattr(getattr(state, "PartialState", None), "_shared_state", None)
    if shared:
        return state.PartialState().is_main_process
    return True


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


class _CurrentStdout(logging.StreamHandler):
    """A StreamHandler bound to whatever sys.stdout is when a record is emitted."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the current sys.stdout always wins
        pass


def setup(level: int = logging.INFO) -> logging.Logger:
    """Give the package logger its one stdout handler; calling it again changes only the level."""
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(_Plain("%(message)s"))
        handler.addFilter(_MainProcessOnly())
        logger.addHandler(handler)
    logger.setLevel(level)
    return logger
