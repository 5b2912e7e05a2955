"""One error path for the console commands: the project's own errors (bad data, bad
arguments or configs, missing or damaged files) end as one line on stderr, ``PROG: error:
...`` naming the file, line and field, and exit code 2. A traceback is for real bugs, or
on request with DHRD_DEBUG=1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import DataError

USER_ERRORS = (DataError, ValueError, OSError, UnicodeError)


def report_user_error(prog: str, e: BaseException) -> int:
    """``PROG: error: ...`` on stderr and exit code 2 for one of ``USER_ERRORS`` (call it
    in an ``except USER_ERRORS`` block: with DHRD_DEBUG=1 it re-raises, traceback and all)."""
    if os.environ.get("DHRD_DEBUG"):
        raise e
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2


def run_main(prog: str, fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    try:
        return fn(argv) or 0
    except USER_ERRORS as e:
        return report_user_error(prog, e)
