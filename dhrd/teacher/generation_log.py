"""The generator's append-only output logs (rationales, failures): one record a line.

Crash safety: each record is one ``write`` of a full line, flushed and fsync'd before
the next, so a kill loses at most the requests in flight. A kill in the middle of a
write leaves a last line without its newline; reading the log leaves it out (and before
appending, cuts it off: it was never complete), so that id is regenerated and no id is
ever written twice. Any other bad line is an error naming file and line, since no
interrupted append makes one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..data.errors import DataError
from ..jsonl import read_jsonl


def read_log(path: str, *, repair: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each record of a log; a missing file is empty. With
    ``repair`` a torn last line is cut off the file (before appending to it), without
    it only left out."""
    rows = []
    for lineno, row in read_jsonl(path, missing_ok=True, torn_tail="cut" if repair else "skip"):
        if isinstance(row, dict) and type(row.get("id")) is int:
            row["id"] = str(row["id"])  # as the training pipeline's reader takes it
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError("expected an object with a string 'id'", path=path, line=lineno, field="id")
        rows.append((lineno, row))
    return rows


class JsonlAppender:
    """Appends whole lines; each is flushed and fsync'd before ``write`` returns."""

    def __init__(self, path: str, fsync: bool = True):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.fsync = path, fsync
        self._f = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
