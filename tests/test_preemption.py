"""Preemption without Slurm or root: the signal flag, the agreement across ranks, the
marker, and a real training process stopped by SIGUSR1 at a step boundary with a
checkpoint, then resumed to the end. (tests/slurm runs the same through sbatch.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import torch

from dhrd.engine import preemption


def test_flag_records_the_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    flag = preemption.PreemptionFlag()
    try:
        assert flag.agreed(lambda t: t) == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.agreed(lambda t: t) == int(signal.SIGUSR1)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_every_rank_stops_when_any_rank_got_a_signal():
    flag = preemption.PreemptionFlag(signals=())
    other_rank_got_term = lambda t: torch.maximum(t, torch.tensor([float(signal.SIGTERM)]))  # noqa: E731
    assert flag.agreed(other_rank_got_term) == int(signal.SIGTERM)


def test_marker_round_trip(tmp_path):
    preemption.write_marker(str(tmp_path), 7, signal.SIGUSR1, "step_00000007")
    marker = json.loads((tmp_path / preemption.MARKER).read_text())
    assert marker["step"] == 7 and marker["signal"] == "SIGUSR1" and marker["checkpoint"] == "step_00000007"
    preemption.clear_marker(str(tmp_path))
    preemption.clear_marker(str(tmp_path))  # absent: nothing to do
    assert not (tmp_path / preemption.MARKER).exists()
    assert preemption.Preempted(3, signal.SIGTERM).code == preemption.EXIT_PREEMPTED == 75


def test_signalled_run_checkpoints_exits_75_and_resumes(tmp_path):
    from tests.distributed.train_helpers import train_command, write_model, write_task

    paths = write_task(tmp_path / "data", n_train=48, n_eval=8)
    model = write_model(tmp_path / "m")
    out = tmp_path / "run"
    cmd = train_command(model, paths, out, "--max_steps", "40", "--global_batch_size", "2", "--log_every", "1")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == preemption.EXIT_PREEMPTED, log[-3000:]
    marker = json.loads((out / preemption.MARKER).read_text())
    assert marker["signal"] == "SIGUSR1" and 0 < marker["step"] < 40
    assert (out / "checkpoints" / marker["checkpoint"]).is_dir()
    again = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {marker['step']}" in again.stdout + again.stderr
    assert not (out / preemption.MARKER).exists()  # consumed by the resumed run
    assert json.loads((out / "eval_results.json").read_text())["step"] == 40
    # config.json says what trained the run now and what trained its first steps
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["earlier_starts"]) == 1 and cfg["earlier_starts"][0]["argv"][-2:] != ["--resume", "auto"]
    assert cfg["environment"]["argv"][-2:] == ["--resume", "auto"]
