"""One error type for bad input, always naming where the problem is (file, line, field).
A leaf module, so every layer (and the one JSONL reader, :mod:`dhrd.jsonl`) can raise it
and every console command's error path can catch it."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data. The message names the file, the 1-based line and the field."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)
