"""dhrd.fileio: whole-file writes that readers and racing writers never see torn."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading

import pytest

from dhrd.fileio import atomic_copy, atomic_open, atomic_write, atomic_write_jsonl, free_port, repair_jsonl_tail


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]


def _writer(path: str, tag: int, n: int) -> None:
    for _ in range(n):
        atomic_write(path, json.dumps({"tag": tag, "pad": "x" * 50_000}))


def test_racing_processes_and_threads_each_replace_the_file_whole(tmp_path):
    """Slurm array tasks record one grid at the same moment: with a shared temporary
    name one of them renamed a file the other had just moved (CI, FileNotFoundError)."""
    path = str(tmp_path / "grid.yaml")
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, t, 40)) for t in range(3)]
    threads = [threading.Thread(target=_writer, args=(path, 10 + t, 40)) for t in range(2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    assert json.loads(open(path).read())["tag"] in {0, 1, 2, 10, 11}
    assert os.listdir(tmp_path) == ["grid.yaml"]


def test_jsonl_round_trip_keeps_unicode(tmp_path):
    path = str(tmp_path / "sub" / "r.jsonl")
    assert atomic_write_jsonl(path, [{"a": "é"}, {"b": 1}]) == 2
    assert open(path, encoding="utf-8").read() == '{"a": "é"}\n{"b": 1}\n'


def test_writing_over_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(str(tmp_path), "x")


def test_repair_cuts_only_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_jsonl_tail(str(path)) == 6
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert repair_jsonl_tail(str(path)) == 0
    assert repair_jsonl_tail(str(tmp_path / "missing.jsonl")) == 0


def test_atomic_copy_replaces_the_copy_whole(tmp_path, monkeypatch):
    import shutil

    src, dst = tmp_path / "records.jsonl", tmp_path / "pub" / "records.jsonl"
    src.write_bytes(b'{"run": "a"}\n' * 1000)
    atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()

    def dies(fin, fout):
        fout.write(fin.read(10))
        raise KeyboardInterrupt  # killed mid-copy

    src.write_bytes(b"new\n")
    monkeypatch.setattr(shutil, "copyfileobj", dies)
    with pytest.raises(KeyboardInterrupt):
        atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == b'{"run": "a"}\n' * 1000 and os.listdir(dst.parent) == ["records.jsonl"]


def test_free_port_can_be_bound():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
