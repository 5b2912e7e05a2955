"""Several harnesses on one experiment root: a run a live harness holds is skipped (not
started twice, not counted as failed), a dead holder's claim is taken over, and a run
another harness finished meanwhile is not rerun. The trainer is replaced by a stand-in
that writes the run's predictions; the claims are the real lock files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dhrd.experiment import runner
from dhrd.experiment.cli import main as experiment_main
from dhrd.experiment.grid import load_grid

GRID = """
name: claims
model: smollm2
seeds: [0]
tasks:
  rte: {train_file: d/train.jsonl, eval_file: d/dev.jsonl}
blocks:
  - methods: [pooled, dhrd]
    axes: {max_train_examples: [100, 200]}
"""


class _Done:
    """A finished trainer process."""

    returncode = 0

    def __init__(self):
        self._dhrd_log = open(os.devnull, "w")

    def poll(self):
        return 0


@pytest.fixture
def grid(tmp_path, monkeypatch):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    started = []

    def fake_start(grid, root, run, threads):
        started.append(run.name)
        with open(os.path.join(runner.run_dir(root, run), "eval_predictions.jsonl"), "w") as f:
            f.write('{"id": "0", "label": 0, "pred": 0}\n')
        return _Done()

    monkeypatch.setattr(runner, "start", fake_start)
    return load_grid(str(path)), str(tmp_path / "root"), started


def _hold(root: str, name: str) -> subprocess.Popen:
    """Another live process holding the claim of run ``name``."""
    code = textwrap.dedent(f"""
        import sys, time
        from dhrd.engine.locks import OutputDirLock
        OutputDirLock({os.path.join(root, "runs", name)!r}, name={runner.CLAIM!r}).acquire()
        print("held", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_held_by_a_live_harness_is_skipped_then_taken_over_when_it_dies(grid, capsys):
    grid, root, started = grid
    held = "rte-dhrd-n200-s0"
    holder = _hold(root, held)
    try:
        outcomes = runner.run_grid(grid, root, jobs=2, log=print)
        status = {o.run: o.status for o in outcomes}
        assert status[held] == "busy" and held not in started
        assert sorted(started) == sorted(r.name for r in grid.runs if r.name != held)
        assert all(s == "ok" for n, s in status.items() if n != held)
        log = capsys.readouterr().out
        assert f"skip {held}: another harness runs it (pid {holder.pid} on " in log
        # the finished runs' claims are released: only the held one is listed as claimed
        assert experiment_main(["list", grid.path, "--root", root]) == 0
        listed = capsys.readouterr().out
        assert f"claimed  {held}  (by pid {holder.pid} on " in listed and listed.count("claimed") == 1
        assert listed.count("  done  ") == len(grid.runs) - 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # its holder died without releasing: the claim file is left, and taken over
    assert os.path.exists(os.path.join(root, "runs", held, runner.CLAIM))
    outcomes = runner.run_grid(grid, root, jobs=2, log=print)
    assert [(o.run, o.status) for o in outcomes if o.status != "done"] == [(held, "ok")]
    assert started.count(held) == 1 and runner.is_done(root, next(r for r in grid.runs if r.name == held))
    assert not os.path.exists(os.path.join(root, "runs", held, runner.CLAIM))


def test_a_run_finished_elsewhere_after_listing_is_not_rerun(grid, monkeypatch):
    grid, root, started = grid
    real_claim = runner.claim

    def claim_after_the_other_finished(root_, run):
        lock = real_claim(root_, run)
        with open(os.path.join(runner.run_dir(root_, run), runner.DONE), "w") as f:
            f.write("{}")  # another harness finished it between this one's listing and its claim
        return lock

    monkeypatch.setattr(runner, "claim", claim_after_the_other_finished)
    outcomes = runner.run_grid(grid, root, jobs=1, log=lambda m: None)
    assert started == [] and {o.status for o in outcomes} == {"done"}
    assert not any(os.path.exists(os.path.join(runner.run_dir(root, r), runner.CLAIM)) for r in grid.runs)


def test_a_claim_whose_holder_was_killed_a_moment_ago_is_taken_over(grid):
    """A lock file too young for its holder to be checked is waited out, then checked:
    a harness restarted right after a kill does not mistake its dead self for a live one."""
    grid, root, _ = grid
    run = grid.runs[0]
    holder = _hold(root, run.name)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = runner.claim(root, run)
    assert lock is not None
    lock.release()
    assert not os.path.exists(os.path.join(runner.run_dir(root, run), runner.CLAIM))


def test_list_shows_how_far_a_started_run_got(grid, capsys):
    grid, root, _ = grid
    run = grid.runs[1]
    out = runner.run_dir(root, run)
    os.makedirs(out)
    assert runner.progress(root, run) is None  # not started
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write('{"train": {}, "derived": {"total_steps": 20}}')
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for step in range(1, 8):
            f.write('{"kind": "train", "step": %d, "train/loss_total": 1.0}\n' % step)
        f.write('{"kind": "eval", "step": 7}\n{"kind": "train", "st')  # killed mid-line
    assert runner.progress(root, run) == "step 7/20"
    assert experiment_main(["list", grid.path, "--root", root]) == 0
    assert f"{run.name}  (step 7/20)" in capsys.readouterr().out


def test_each_finished_run_is_recorded_at_once(grid):
    """A harness writes a finished run into <root>/records.jsonl when it ends, not only at
    aggregation: a machine lost mid-queue (run directories gone) keeps every finished run."""
    import shutil
    import threading

    from dhrd.experiment.records import collect_records, read_records

    grid, root, started = grid
    runner.run_grid(grid, root, jobs=2, log=lambda m: None)
    assert sorted(read_records(root)) == sorted(r.name for r in grid.runs)
    shutil.rmtree(os.path.join(root, "runs"))
    assert all(runner.is_done(root, r) for r in grid.runs)
    # harnesses finishing together (array tasks): each update is under the root's lock
    os.remove(os.path.join(root, "records.jsonl"))
    for r in grid.runs:
        os.makedirs(runner.run_dir(root, r))
        with open(os.path.join(runner.run_dir(root, r), "eval_predictions.jsonl"), "w") as f:
            f.write('{"id": "0", "label": 0, "pred": 0}\n')
    threads = [threading.Thread(target=lambda r=r: (runner.finish(root, r, 0), collect_records(grid, root)))
               for r in grid.runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_records(root)) == sorted(r.name for r in grid.runs)
