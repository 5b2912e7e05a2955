"""Reading JSON Lines so that every bad line is a DataError naming the file and line:
invalid UTF-8, malformed JSON, nesting too deep, integers too long, lone surrogates
(which would only fail later, deep inside a tokenizer)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import DataError


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


def parse_line(line: str | bytes, path, lineno: int) -> Any:
    """One JSON value from one line; DataError with ``path:lineno`` on anything wrong."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})", path=path,
                            line=lineno) from None
    if line.startswith("\ufeff"):
        line = line[1:]  # a byte-order mark (first line of files written by some editors)
    try:
        value = json.loads(line, object_pairs_hook=_unique_keys)
    except DuplicateKey as e:
        raise DataError(f"duplicate key {e.key!r} in one object (which one is meant?)", path=path,
                        line=lineno) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path=path, line=lineno) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise DataError(f"malformed JSON ({e})", path=path, line=lineno) from None
    try:
        line.encode("utf-8") if "\\u" not in line else json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError("a \\ud800-\\udfff escape that is not part of a surrogate pair (not valid text)",
                        path=path, line=lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path=path, line=lineno) from None
    return value


def iter_lines(lines: Iterable[str | bytes], path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of the non-blank lines."""
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield lineno, parse_line(line, path, lineno)


def read_jsonl(path) -> Iterator[tuple[int, Any]]:
    """Stream a JSONL file (opened as bytes, so a bad byte is reported at its line)."""
    with open(path, "rb") as f:
        yield from iter_lines(f, path)
