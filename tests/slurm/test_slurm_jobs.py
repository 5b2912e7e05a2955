"""The Slurm launchers on a real local cluster (two fake nodes on this host): a BoolQ
job end to end, a 2-node job equal to a 2-process single-node run, preemption with
requeue and exact resume, and a second job refused on a busy output dir."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import time

import pytest

from tests.distributed.train_helpers import losses, run_train
from tests.slurm.slurm_helpers import REPO, diagnostics, job_env, job_state, sbatch, train_steps, wait_for, wait_job
from tests.slurm.slurm_helpers import job_log as _log

pytestmark = pytest.mark.slurm

TINY = ["--pack_tokens", 128, "--max_seq_len", 128, "--warmup_steps", 1]

pytest_plugins = ["tests.slurm.slurm_fixtures"]  # the cluster and data fixtures (not a conftest.py: see there)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_sbatch_wait_train_boolq_completes_with_checkpoint_and_tensorboard(slurm_cluster, fixtures, tmp_path):
    out = tmp_path / "boolq"
    env = job_env(slurm_cluster, fixtures["model"], fixtures["boolq"], out,
                  [*TINY, "--max_steps", 4, "--micro_batches_per_step", 2], nproc=1)
    env["SAVE_EVERY"] = "2"
    proc = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"], wait=True)
    job = proc.stdout.strip().splitlines()[0]
    log = _log(tmp_path, job)
    assert proc.returncode == 0, proc.stderr + log[-4000:]
    assert job_state(slurm_cluster, job)[0] == "COMPLETED"
    cfg = read_json(out / "config.json")
    assert cfg["data"]["task"] == "boolq" and cfg["loss"]["method"] == "dhrd"
    assert os.path.exists(out / "checkpoints" / "step_00000002" / "dhrd_complete.json")
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert train_steps(out) == [1, 2, 3, 4]
    assert os.path.exists(out / "final" / "model.safetensors")
    assert not os.path.exists(out / ".dhrd-output.lock")  # released at the end
    assert "[launch_node.sh]" in log and "node 0/1" in log


def test_two_nodes_match_two_processes_on_one_node(slurm_cluster, fixtures, tmp_path):
    """World size 2 as 2 nodes x 1 process (srun -> torchrun, rendezvous at n1) against
    `deepspeed --num_gpus 2` on one node: same global batch per step, same data order.
    Same arithmetic (fp32, a 2-rank gloo all-reduce either way): measured bit-identical
    loss and grad norm; the tolerance, 1e-6 relative, only allows for a reduction order
    a different gloo build might pick."""
    steps = 6
    extra = [*TINY, "--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"), "--max_steps", steps,
             "--micro_batches_per_step", 4, "--lr", 3e-3, "--seed", 7]
    out_slurm = tmp_path / "two_nodes"
    env = job_env(slurm_cluster, fixtures["model"], fixtures["rte"], out_slurm, extra, nproc=1)
    # the generic script, task from the first argument
    proc = sbatch(env, "train.sh", "rte", sbatch_args=["--nodes=2", f"--output={tmp_path}/%x-%j.out"])
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    ref = run_train(fixtures["model"], fixtures["rte"], tmp_path / "one_node", *extra, nprocs=2)
    assert ref.returncode == 0, ref.stderr[-4000:]
    state = wait_job(slurm_cluster, job)
    log = _log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:] + "\n" + diagnostics(slurm_cluster, job)
    assert "node 0/2" in log and "node 1/2" in log
    cfg = read_json(out_slurm / "config.json")
    assert cfg["derived"]["world_size"] == 2 and cfg["derived"]["gradient_accumulation_steps"] == 2
    for key in ("train/loss_total", "train/grad_norm"):
        got, want = losses(out_slurm, key), losses(tmp_path / "one_node", key)
        assert sorted(got) == sorted(want) == list(range(1, steps + 1))
        for s in want:
            assert abs(got[s] - want[s]) <= 1e-6 * max(1.0, abs(want[s])), (key, s, got[s], want[s])


def test_usr1_checkpoints_requeues_and_resumes_without_losing_or_repeating_steps(slurm_cluster, fixtures,
                                                                                 tmp_path):
    """Slurm's time-limit warning is --signal=B:USR1 (to the batch shell only); scancel
    --batch --signal=USR1 sends exactly that. train.sh forwards it to the trainers (2
    nodes), they agree on a step, checkpoint, exit; train.sh requeues; the rerun resumes."""
    steps = 50
    out = tmp_path / "preempt"
    env = job_env(slurm_cluster, fixtures["model"], fixtures["boolq"], out,
                  [*TINY, "--max_steps", steps, "--micro_batches_per_step", 2, "--seed", 3], nproc=1)
    env["SAVE_EVERY"] = "0"  # the only checkpoint is the one the signal asks for
    proc = sbatch(env, "train_boolq.sh", sbatch_args=["--nodes=2", f"--output={tmp_path}/%x-%j.out"])
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(lambda: len(train_steps(out)) >= 3, what="3 logged steps")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm_cluster, check=True)

    # the requeued job waits for its BeginTime (Slurm holds a requeued job for cred_expire,
    # 15 s in the local cluster); it starts by itself after that
    wait_for(lambda: job_state(slurm_cluster, job) == ("PENDING", "BeginTime"), timeout=120,
             what="the job to be requeued")
    marker = read_json(out / "preempted.json")
    k = marker["step"]
    assert marker["signal"] == "SIGUSR1" and marker["slurm_job_id"] == job and 3 <= k < steps
    assert os.path.exists(out / "checkpoints" / f"step_{k:08d}" / "dhrd_complete.json")
    assert train_steps(out) == list(range(1, k + 1))  # stopped right after the checkpoint step
    # (the hold is not cut short with StartTime=now: until the credential expires, a node
    # refuses the relaunch, "Job credential revoked", and the job ends FAILED)

    state = wait_job(slurm_cluster, job)
    log = _log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:] + "\n" + diagnostics(slurm_cluster, job)
    assert "restart 1" in log and f"resumed from {out}/checkpoints/step_{k:08d} at step {k}" in log
    assert "requeueing job" in log
    # every step exactly once, in order, across the two runs of the job
    assert train_steps(out) == list(range(1, steps + 1))
    assert not os.path.exists(out / "preempted.json")  # consumed by the rerun


def test_second_job_on_a_busy_output_dir_is_refused_until_the_first_is_dead(slurm_cluster, fixtures, tmp_path):
    """Job A trains; job B on the same OUTPUT_DIR fails at once naming A. Then scancel A
    (TERM): A checkpoints and stops, and is NOT requeued (a cancel means stop). Job C on
    that dir, finding a lock left behind by A (as a hard kill leaves it), takes it over
    and continues A's run from its checkpoint."""
    out = tmp_path / "busy"
    tiny = [*TINY, "--micro_batches_per_step", 2]
    env = job_env(slurm_cluster, fixtures["model"], fixtures["boolq"], out, [*tiny, "--max_steps", 400], nproc=1)
    env["SAVE_EVERY"] = "0"
    a = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"])
    assert a.returncode == 0, a.stderr
    job_a = a.stdout.strip()
    wait_for(lambda: train_steps(out), what="job A to train")
    b = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"])
    assert b.returncode == 0, b.stderr
    job_b = b.stdout.strip()
    state_b = wait_job(slurm_cluster, job_b)
    log_b = _log(tmp_path, job_b)
    assert state_b == "FAILED", log_b[-3000:]
    assert f"is in use by Slurm job {job_a}" in log_b, log_b[-3000:]
    assert job_state(slurm_cluster, job_a)[0] == "RUNNING"  # A is untouched

    subprocess.run(["scancel", job_a], env=slurm_cluster, check=True)
    state = wait_job(slurm_cluster, job_a)
    assert state == "CANCELLED"
    marker = read_json(out / "preempted.json")
    k = marker["step"]
    assert marker["signal"] == "SIGTERM"
    assert os.path.exists(out / "checkpoints" / f"step_{k:08d}" / "dhrd_complete.json")
    assert "requeueing" not in _log(tmp_path, job_a)

    lock = out / ".dhrd-output.lock"
    assert not lock.exists()  # A released it on the way out
    lock.write_text(f"SLURM 0 {job_a}\nn1\n")  # what a SIGKILLed A leaves behind
    t = time.time() - 10  # older than the lock's minimum age, so its holder is checked
    os.utime(lock, (t, t))
    env_c = job_env(slurm_cluster, fixtures["model"], fixtures["boolq"], out, [*tiny, "--max_steps", k + 2], nproc=1)
    env_c["SAVE_EVERY"] = "0"
    c = sbatch(env_c, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"], wait=True)
    job_c = c.stdout.strip().splitlines()[0]
    log_c = _log(tmp_path, job_c)
    assert c.returncode == 0 and job_state(slurm_cluster, job_c)[0] == "COMPLETED", log_c[-4000:]
    assert f"resumed from {out}/checkpoints/step_{k:08d} at step {k}" in log_c
    assert train_steps(out) == list(range(1, k + 3))
    assert not lock.exists()
