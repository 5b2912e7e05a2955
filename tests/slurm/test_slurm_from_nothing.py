"""`sbatch slurm/train_boolq.sh` from nothing on the local Slurm cluster: no rationale file.
Without a teacher the job stops within seconds with one line naming what to set; with a
tiny local teacher (a random model: gibberish rationales, but the real path) the job
generates the rationales, prints their consistency report, trains and exports; killed
during generation, the next job resumes it without regenerating what is on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from tests.slurm.slurm_helpers import diagnostics, job_env, job_log, job_state, sbatch, wait_for, wait_job, write_boolq

pytestmark = pytest.mark.slurm

pytest_plugins = ["tests.slurm.slurm_fixtures"]  # the cluster and data fixtures (not a conftest.py: see there)

N_TRAIN = 96
TRAIN = ["--pack_tokens", 128, "--max_seq_len", 128, "--warmup_steps", 1, "--max_steps", 4,
         "--micro_batches_per_step", 2, "--head", "linear"]  # the linear head: the HF export applies too
# greedy, no end marker needed (a random model never writes one), 32 tokens, one prompt at a time:
# about 10 examples/s on this machine, a window of seconds to kill the job in
TEACHER_ARGS = "--no_end_marker_required --max_new_tokens 32 --batch_size 1 --temperature 0 --threads 1 --device cpu"


def lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture
def boolq(tmp_path):
    paths = write_boolq(tmp_path / "boolq", n_train=N_TRAIN)
    paths["rationales"] = str(tmp_path / "boolq" / "rationales.jsonl")  # not there: BoolQ ships none
    return paths


def test_without_a_teacher_the_job_fails_in_seconds_with_one_line(slurm_cluster, fixtures, boolq, tmp_path):
    env = job_env(slurm_cluster, fixtures["model"], boolq, tmp_path / "out", TRAIN)
    t0 = time.time()
    proc = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"], wait=True)
    took = time.time() - t0
    job = proc.stdout.strip().splitlines()[0]
    log = job_log(tmp_path, job)
    assert proc.returncode != 0 and job_state(slurm_cluster, job)[0] == "FAILED", log
    assert log.splitlines() == [
        f"[train.sh] error: rationale file {boolq['rationales']} is missing: set TEACHER_MODEL (a local model dir, "
        f"or with TEACHER_URL an endpoint's model) to generate it in this job, or run: dhrd rationales generate "
        f"--task boolq --input {boolq['train']} --out {boolq['rationales']} --model TEACHER"], log
    assert took < 30, f"{took:.0f} s from submit to the end"  # scheduling included; nothing was loaded
    assert not os.path.exists(tmp_path / "out")


def test_killed_generation_resumes_then_trains_and_exports(slurm_cluster, fixtures, boolq, tmp_path):
    out = tmp_path / "out"
    env = job_env(slurm_cluster, fixtures["model"], boolq, out, TRAIN)
    del env["EXPORT"]  # train_boolq.sh's default: all
    env.update(TEACHER_MODEL=fixtures["model"], TEACHER_ARGS=TEACHER_ARGS, DHRD_PROGRESS_EVERY="1")
    partial = boolq["rationales"].replace(".jsonl", ".partial.jsonl")
    first = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"])
    assert first.returncode == 0, first.stderr
    job_a = first.stdout.strip()
    wait_for(lambda: os.path.exists(partial) and len(lines(partial)) >= 5, what="5 generated rationales")
    subprocess.run(["scancel", job_a], env=slurm_cluster, check=True)
    assert wait_job(slurm_cluster, job_a) == "CANCELLED"
    kept = lines(partial)
    assert 5 <= len(kept) < N_TRAIN, f"generation finished ({len(kept)}) before the kill: slow the teacher down"
    assert not os.path.exists(boolq["rationales"]) and not os.path.exists(out / "checkpoints")  # never trained

    second = sbatch(env, "train_boolq.sh", sbatch_args=[f"--output={tmp_path}/%x-%j.out"], wait=True)
    job_b = second.stdout.strip().splitlines()[0]
    log = job_log(tmp_path, job_b)
    assert second.returncode == 0, log[-5000:] + "\n" + diagnostics(slurm_cluster, job_b)
    # resumed: the killed job's records kept as they were, only the rest generated
    final = lines(boolq["rationales"])
    assert final[:len(kept)] == kept and not os.path.exists(partial)
    assert sorted(json.loads(x)["id"] for x in final) == sorted(str(i) for i in range(N_TRAIN))
    with open(boolq["rationales"].replace(".jsonl", ".summary.json")) as f:
        summary = json.load(f)
    assert (summary["already_written"], summary["written"]) == (len(kept), N_TRAIN - len(kept))
    assert f"already written {len(kept)}" in log and "consistency of the generated rationales" in log
    assert re.search(rf"^rationales boolq \d+/{N_TRAIN - len(kept)} \(", log, re.M), log[-5000:]
    # trained on them, progress as plain lines, then exported
    assert re.search(r"^\[rank0\] train 4/4 \(100\.0%\) \| cls [\d.]+ \| lm [\d.]+ \| ex/s [\d.]+ \|", log, re.M), \
        log[-5000:]
    assert "\r" not in log
    report = json.load(open(out / "data_report.json"))
    assert report["counts"]["examples_with_rationale"] == N_TRAIN, report
    assert os.path.exists(out / "export" / "lean" / "lean_config.json")
    assert os.path.exists(out / "export" / "hf" / "config.json") and os.path.exists(out / "export" / "hf" / "README.md")
