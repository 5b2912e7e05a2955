"""Crash safety and resumption: kill -9 mid-run, a truncated last line, corrupt files,
prompt-version mixing; sharding, id lists and merging."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dhrd.data.errors import DataError
from dhrd.data.tasks import read_examples
from dhrd.teacher.generate import GenerateConfig, run
from dhrd.teacher.interrupts import Interrupts
from dhrd.teacher.merge import merge, merge_main
from dhrd.teacher.selection import select
from dhrd.teacher.shards import parse_shard, shard_of
from tests.teacher.stub_openai import StubServer, StubState
from tests.teacher.teacher_helpers import FakeTeacher, read_jsonl, write_cb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ids_in(path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


def test_kill_9_mid_run_then_rerun_writes_every_id_exactly_once(tmp_path):
    n = 60
    data = write_cb(tmp_path / "cb.jsonl", n)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "dhrd.teacher.generate_cli", "--task", "cb", "--input", str(data), "--out", str(out),
           "--model", "stub", "--concurrency", "3", "--timeout", "10", "--no_progress"]
    with StubServer(StubState(delay=0.05)) as url:
        proc = subprocess.Popen(cmd + ["--base_url", url], cwd=ROOT, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 10):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        first = ids_in(out)
        assert 10 <= len(first) < n  # killed part way
        rerun = subprocess.run(cmd + ["--base_url", url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"already written {len(first)}" in rerun.stderr
    final = ids_in(out)
    assert final[:len(first)] == first and sorted(final, key=int) == [str(i) for i in range(n)]


def test_a_truncated_last_line_is_cut_and_regenerated_once(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 4)
    out = tmp_path / "r.jsonl"
    good = {"id": "0", "rationale": "r", "teacher_label": None, "teacher": "fake", "prompt_version": "gold-v1"}
    out.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "1"})[:25])  # a kill mid-write
    teacher = FakeTeacher()
    s = run(GenerateConfig("cb", str(data), str(out), progress=False), teacher)
    assert (s.already_written, s.written) == (1, 3)
    assert sorted(ids_in(out)) == ["0", "1", "2", "3"]  # every line parses, "1" once


def test_corrupt_middle_line_and_mixed_prompt_versions_are_errors(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 3)
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "0", "prompt_version": "gold-v1"}\n{not json\n{"id": "2", "prompt_version": "gold-v1"}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: malformed JSON"):
        run(GenerateConfig("cb", str(data), str(out), progress=False), FakeTeacher())
    out.write_text('{"id": "0", "prompt_version": "gold-v0"}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:1: field 'prompt_version': written with prompt version 'gold-v0'"):
        run(GenerateConfig("cb", str(data), str(out), progress=False), FakeTeacher())


def test_shards_are_disjoint_and_complete_and_merge_checks_it(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 30)
    examples = read_examples("cb", data)
    parts = [select(examples, shard=(i, 3)) for i in range(3)]
    ids = [ex.id for part in parts for ex in part]
    assert sorted(ids, key=int) == [str(i) for i in range(30)] and all(parts)
    assert shard_of("17", 3) == shard_of("17", 3)  # stable, not Python's salted hash()

    outs = []
    for i in range(3):
        cfg = GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), shard=(i, 3), progress=False)
        run(cfg, FakeTeacher())
        assert cfg.out_path.endswith(f"r.shard-{i}-of-3.jsonl")
        outs.append(cfg.out_path)
    merged = tmp_path / "all.jsonl"
    assert merge_main(outs + ["--out", str(merged), "--task", "cb", "--input", str(data)]) == 0
    assert sorted(ids_in(merged), key=int) == [str(i) for i in range(30)]

    with pytest.raises(DataError, match="shards must be disjoint"):
        merge([outs[0], outs[0]], str(tmp_path / "x.jsonl"))
    with pytest.raises(DataError, match=r"\d+ id\(s\) missing"):
        merge(outs[:2], str(tmp_path / "x.jsonl"), expected_ids=[ex.id for ex in examples])
    assert not (tmp_path / "x.jsonl").exists()


def test_ids_file_targets_a_subset_and_replace_merges_it_back(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 6)
    first = tmp_path / "first.jsonl"
    run(GenerateConfig("cb", str(data), str(first), progress=False), FakeTeacher(lambda p: "old [END OF REASONING]"))
    (tmp_path / "ids.txt").write_text("4\n\n1\n")
    again = GenerateConfig("cb", str(data), str(tmp_path / "again.jsonl"), ids_file=str(tmp_path / "ids.txt"),
                           progress=False)
    assert run(again, FakeTeacher(lambda p: "new [END OF REASONING]")).written == 2
    merged = tmp_path / "merged.jsonl"
    assert merge([str(first), again.out_path], str(merged), replace=True) == {"records": 6, "replaced": 2, "inputs": 2}
    texts = {r["id"]: r["rationale"] for r in read_jsonl(merged)}
    assert texts == {"0": "old", "1": "new", "2": "old", "3": "old", "4": "new", "5": "old"}

    (tmp_path / "bad.txt").write_text("4\n99\n")
    with pytest.raises(DataError, match=r"bad\.txt: 1 id\(s\) not in the task file, e.g. \['99'\]"):
        run(GenerateConfig("cb", str(data), str(tmp_path / "z.jsonl"), ids_file=str(tmp_path / "bad.txt"),
                           progress=False), FakeTeacher())


def test_sigterm_stops_cleanly_with_a_summary(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 200)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "dhrd.teacher.generate_cli", "--task", "cb", "--input", str(data), "--out", str(out),
           "--model", "stub", "--concurrency", "2", "--no_progress"]
    with StubServer(StubState(delay=0.05)) as url:
        proc = subprocess.Popen(cmd + ["--base_url", url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 5):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "(interrupted)" in err and f"written {len(ids_in(out))}" in err


def test_an_interrupt_waits_for_the_record_being_written():
    """The SIGTERM/SIGINT handler inside a record's write-and-count section only marks
    the interrupt; it is raised when the section ends, so the summary counts every record
    on disk (the race behind a once-seen 'written N' mismatch)."""
    interrupts = Interrupts()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.section():
            interrupts.handle(signal.SIGTERM, None)
            done.append("written and counted")
    assert done == ["written and counted"]
    interrupts.handle(signal.SIGTERM, None)  # a second signal (Slurm's and the job script's): ignored
    fresh = Interrupts()  # a new run's state: the first run's signals are not its own
    assert not fresh.interrupted and not fresh.pending
    with pytest.raises(KeyboardInterrupt):
        fresh.handle(signal.SIGTERM, None)  # outside a section: at once
    with fresh.section():
        pass  # nothing pending any more


def test_a_run_counts_a_signal_inside_a_record_section_after_writing_it(tmp_path):
    """The run owns its Interrupts: a signal while a record is being written stops the
    run after that record is on disk and counted."""
    data = write_cb(tmp_path / "cb.jsonl", 5)
    out = tmp_path / "r.jsonl"
    interrupts = Interrupts()

    class SignalOnSecond(FakeTeacher):
        def generate(self, prompts):
            for i, completion in super().generate(prompts):
                if i == 1:
                    interrupts.depth += 1  # as if the signal lands in the section of record 1
                    interrupts.handle(signal.SIGTERM, None)
                    interrupts.depth -= 1
                yield i, completion

    s = run(GenerateConfig("cb", str(data), str(out), progress=False), SignalOnSecond(), interrupts)
    assert s.interrupted and (s.written, s.not_attempted) == (2, 3) and len(ids_in(out)) == 2


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert parse_shard("auto") == (2, 3)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parse_shard("auto") is None
