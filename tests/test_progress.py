"""dhrd/progress.py: a stream that is not a terminal (a log file) gets whole, periodic
lines with the position, the caller's stats and an ETA, never a bar's carriage returns;
the harness's line for a run comes from that run's metrics.jsonl."""

from __future__ import annotations

import io
import json
import time

import pytest

from dhrd.progress import Progress, duration, log_every, quiet_library_bars, stage, status_line


def test_a_log_gets_whole_lines_first_periodically_and_last():
    log = io.StringIO()
    p = Progress(10, "train", unit="step", prefix="[rank0] ", stream=log, every=3600)
    for _ in range(10):
        p.update(1, cls=0.6931, lm=2.5)
    p.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2  # the first update and the end; the period is long
    assert lines[0].startswith("[rank0] train 1/10 (10.0%) | cls 0.6931 | lm 2.5 | step/s ")
    assert " | ETA " in lines[0] and lines[1].startswith("[rank0] train 10/10 (100.0%)")
    assert "ETA" not in lines[1]  # done: nothing left to estimate

    log = io.StringIO()
    p = Progress(4, "rationales", unit="ex", stream=log, every=0)  # every update gets its line
    for _ in range(4):
        p.update(1, failed=0)
    p.close()
    assert [ln.split(" | ")[0] for ln in log.getvalue().splitlines()] == [f"rationales {i}/4 ({25 * i:.1f}%)"
                                                                         for i in range(1, 5)]


def test_resumed_work_counts_its_rate_from_where_it_started():
    log = io.StringIO()
    p = Progress(100, "train", initial=90, stream=log, every=0)
    time.sleep(0.05)
    p.update(1)
    p.close()
    assert log.getvalue().startswith("train 91/100 (91.0%)")
    assert p.rate() < 100  # 1 step in >= 50 ms, not 91
    silent = io.StringIO()
    q = Progress(3, "x", stream=silent, enabled=False)
    q.update(3)
    q.close()
    assert silent.getvalue() == ""


def test_status_line_and_period(monkeypatch):
    assert status_line("step", 5, 20, {"cls": 0.5, "lm": None}, 65, 0.5) == \
        "step 5/20 (25.0%) | cls 0.5 | elapsed 1m05s | ETA 30s"
    assert status_line("step", 5, 0, {}, 1, 0.0) == "step 5 | elapsed 1s"  # no total known
    assert [duration(s) for s in (9, 245, 7380, float("nan"))] == ["9s", "4m05s", "2h03m", "?"]
    monkeypatch.setenv("DHRD_PROGRESS_EVERY", "2.5")
    assert log_every() == 2.5
    monkeypatch.setenv("DHRD_PROGRESS_EVERY", "often")
    with pytest.raises(ValueError, match="DHRD_PROGRESS_EVERY='often'"):
        log_every()


def test_the_harness_line_reads_the_runs_metrics(tmp_path):
    from dhrd.experiment import runner
    from dhrd.experiment.grid import Run

    run = Run("rte", "dhrd", 0)
    out = tmp_path / "runs" / "rte-dhrd-s0"
    out.mkdir(parents=True)
    assert runner.live_status(str(tmp_path), run, 3).startswith("starting (no step logged yet)")
    (out / "config.json").write_text('{"derived": {"total_steps": 20}}')
    rows = [{"kind": "train", "step": s, "time": 100.0 + 2 * s, "train/loss_cls": 0.7, "train/loss_lm": 2.0,
             "perf/samples_per_s": 8.0} for s in (1, 2, 3, 4)]
    rows += [{"kind": "train", "step": s, "time": 1000.0 + s, "train/loss_cls": 0.6, "train/loss_lm": 1.5,
              "perf/samples_per_s": 16.0} for s in (3, 4, 5, 6)]  # resumed from step 2: 1 s a step now
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tr')
    assert runner.live_status(str(tmp_path), run, 70) == \
        "step 6/20 (30.0%) | cls 0.6 | lm 1.5 | ex/s 16 | elapsed 1m10s | ETA 14s"
    with open(out / "metrics.jsonl", "a") as f:
        f.write('\n{"kind": "train", "step": 20, "time": 1020.0}\n')
    assert runner.live_status(str(tmp_path), run, 90) == "step 20/20 (100.0%) | elapsed 1m30s | final evaluation"


def test_a_stage_says_what_is_running_and_how_long_it_took(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars  # imported first: told

    log = io.StringIO()
    with stage("converting x", stream=log):
        pass
    assert log.getvalue().splitlines() == ["converting x ...", "converting x: done in 0s"]
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "0")  # recorded, so that the undo restores what was there
        monkeypatch.delenv(var)
    assert quiet_library_bars(io.StringIO())  # a log: the libraries' bars go
    assert are_progress_bars_disabled()
    monkeypatch.undo()  # the variables as they were, then the bars back for the tests that follow
    enable_progress_bars()
