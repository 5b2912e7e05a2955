"""File and socket helpers the whole package shares (not ``io.py``: ``python dhrd/train.py``
puts dhrd/ first on sys.path, where that name would shadow the standard library). A leaf module: it imports nothing
from dhrd, so data, model, engine, teacher, experiment and serving code can all use it.

Every file the project writes whole (checkpoint markers, predictions, rationale files,
grid records) goes through :func:`atomic_open`: a reader, or a run killed half-way, sees
the old file or the new one, never a torn one. The temporary name is unique per process
and thread, so several writers racing for the same path (Slurm array tasks recording
one grid) each replace it whole instead of renaming each other's half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import IO


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, fsync: bool = True, encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)``: written to a temporary file beside
    ``path``, flushed (and fsynced: the rename must not reach the disk before the data),
    then renamed over ``path``. On an exception the temporary file is removed and
    ``path`` is untouched. Creates the parent directory."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes whole files (mode {mode!r})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory (give a file path)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: str, data: str | bytes, *, fsync: bool = True) -> None:
    """The whole of ``data`` to ``path``, atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync) as f:
        f.write(data)


def atomic_write_lines(path: str, lines: Iterable[str], *, fsync: bool = True) -> int:
    """One line per item (a newline added to each); returns the count."""
    n = 0
    with atomic_open(path, fsync=fsync) as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def atomic_write_jsonl(path: str, records: Iterable[dict], *, fsync: bool = True) -> int:
    """One JSON object per line, UTF-8 kept as is; returns the count."""
    return atomic_write_lines(path, (json.dumps(r, ensure_ascii=False) for r in records), fsync=fsync)


def atomic_write_json(path: str, obj, *, indent: int | None = 1, fsync: bool = True) -> None:
    atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", fsync=fsync)


def atomic_copy(src: str, dst: str, *, fsync: bool = True) -> None:
    """``shutil.copyfile``, but ``dst`` is replaced whole (see :func:`atomic_open`): a
    published records file killed mid-copy must not lose the runs it recorded."""
    with open(src, "rb") as fin, atomic_open(dst, "wb", fsync=fsync) as fout:
        shutil.copyfileobj(fin, fout)


def loads_json(text: str | bytes):
    """``json.loads`` whose every failure is a ValueError: arrays or objects nested past
    what Python's parser recurses into raise RecursionError there, which no caller's
    ``except ValueError`` would catch."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply (arrays or objects inside each other "
                         f"~{sys.getrecursionlimit()} levels)") from None


def read_json(path: str):
    """A JSON file's value; malformed JSON, nesting too deep or text that is not UTF-8 is
    a ValueError naming the file (a missing file stays FileNotFoundError)."""
    try:
        with open(path, encoding="utf-8") as f:
            return loads_json(f.read())
    except (ValueError, UnicodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_or_none(path: str):
    """A JSON file's value, or None where it is missing, unreadable or not valid JSON (a
    record a killed writer cut short, one older code never wrote): for optional records."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def repair_jsonl_tail(path: str) -> int:
    """A process killed while appending may leave half a line at the end of a JSONL log;
    cut it, so the lines a resumed run appends stay parseable. Returns the bytes cut."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                os.fsync(f.fileno())
                return len(data) - keep
    except FileNotFoundError:
        pass
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (the OS picks it), for a rendezvous or a test server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
