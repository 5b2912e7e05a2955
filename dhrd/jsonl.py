"""The one JSON Lines reader: task files, rationale files and logs, grid records, run
predictions, ``dhrd predict``'s stdin. Every bad line is a :class:`DataError` (or the
subclass a caller's command catches) naming the file and line: invalid UTF-8, malformed
JSON, duplicate keys, nesting too deep, integers too long, lone surrogates (which would
only fail later, deep inside a tokenizer).

Append-only logs (generated rationales) may end in half a line when a writer was
killed mid-append; ``torn_tail`` says what to do with a last line that has no newline:
read it like any other (None, the default: an editor's file may lack the final
newline), leave it out ("skip"), or cut it off the file before reading ("cut"), so the
lines a resumed writer appends stay parseable. Blank lines are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import DataError
from .fileio import repair_jsonl_tail

log = logging.getLogger(__name__)
TORN_TAIL = (None, "skip", "cut")


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _decode(line: str | bytes, path, lineno, error: type[DataError]) -> str:
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})", path=path,
                        line=lineno) from None
    return line[1:] if line.startswith("\ufeff") else line  # a byte-order mark (some editors write one)


def parse_line(line: str | bytes, path, lineno: int | None, *, error: type[DataError] = DataError) -> Any:
    """One JSON value from one line; ``error`` (a DataError) with ``path:lineno`` on
    anything wrong."""
    line = _decode(line, path, lineno, error)
    try:
        value = json.loads(line, object_pairs_hook=_unique_keys)
    except DuplicateKey as e:
        raise error(f"duplicate key {e.key!r} in one object (which one is meant?)", path=path,
                    line=lineno) from None
    except json.JSONDecodeError as e:
        raise error(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
    except RecursionError:
        raise error("JSON nested too deeply", path=path, line=lineno) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"malformed JSON ({e})", path=path, line=lineno) from None
    try:
        line.encode("utf-8") if "\\u" not in line else json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise error("a \\ud800-\\udfff escape that is not part of a surrogate pair (not valid text)",
                    path=path, line=lineno) from None
    except RecursionError:
        raise error("JSON nested too deeply", path=path, line=lineno) from None
    return value


def iter_lines(lines: Iterable[str | bytes], path, *, torn_tail: str | None = None,
               error: type[DataError] = DataError) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of the non-blank lines; with ``torn_tail`` a last
    line without its newline is left out (only a file's last line can lack one)."""
    for lineno, line in enumerate(lines, 1):
        if torn_tail and not line.endswith(b"\n" if isinstance(line, bytes) else "\n"):
            log.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run", path, len(line))
            return
        if line.strip():
            yield lineno, parse_line(line, path, lineno, error=error)


def read_jsonl(path, *, missing_ok: bool = False, torn_tail: str | None = None,
               error: type[DataError] = DataError) -> Iterator[tuple[int, Any]]:
    """Stream a JSONL file (opened as bytes, so a bad byte is reported at its line); with
    ``missing_ok`` a missing file has no lines. ``torn_tail``: see the module docstring."""
    if torn_tail not in TORN_TAIL:
        raise ValueError(f"torn_tail must be one of {TORN_TAIL}, not {torn_tail!r}")
    if missing_ok and not os.path.exists(path):
        return
    if torn_tail == "cut" and (cut := repair_jsonl_tail(os.fspath(path))):
        log.warning("%s: cut a truncated last line (%d bytes) left by an interrupted run", path, cut)
    with open(path, "rb") as f:
        yield from iter_lines(f, path, torn_tail=torn_tail, error=error)
