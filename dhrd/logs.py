"""The ``dhrd`` logger hierarchy's one handler. Library modules only call
``logging.getLogger(__name__)``; nothing is configured on import (an application that
imports dhrd routes or silences ``dhrd`` as it would any library's logger). The entry
points (``dhrd``, ``dhrd/train.py``) call ``setup`` once: each line then goes to stderr
as ``[rank0] message``, because a launcher interleaves the ranks' output.
``DHRD_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR; default INFO) sets what is shown."""

from __future__ import annotations

import logging
import os
import sys

_rank: int | None = None  # set by the engine once the process group knows it


def set_rank(rank: int) -> None:
    """The rank the prefix shows from now on (before this: the RANK variable, else 0)."""
    global _rank
    _rank = rank


def rank() -> int:
    """This process's rank as far as it is known yet."""
    if _rank is not None:
        return _rank
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class RankFormatter(logging.Formatter):
    """``[rank{r}] `` before every line of the record (a multi-line report, a traceback),
    so each line of interleaved output still says which process wrote it."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"[rank{rank()}] "
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a redirect or
    pytest's capture set up after ``setup``), not the stream it was at setup."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(level: str | int | None = None) -> logging.Logger:
    """Install the handler on the ``dhrd`` logger (again: replaced, not doubled) at
    ``level`` (None: ``DHRD_LOG_LEVEL``, else INFO). For entry points only. Records do
    not propagate to the root logger, so a root handler some library installs does not
    print each line twice."""
    value = level if level is not None else os.environ.get("DHRD_LOG_LEVEL") or "INFO"
    number = logging.getLevelName(value.strip().upper()) if isinstance(value, str) else value
    logger = logging.getLogger("dhrd")
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(RankFormatter())
    logger.addHandler(handler)
    logger.setLevel(number if isinstance(number, int) else logging.INFO)
    logger.propagate = False
    if not isinstance(number, int):  # a typo in a variable should not stop a run
        logger.warning("warning: log level %r is not DEBUG, INFO, WARNING or ERROR; using INFO", value)
    return logger
