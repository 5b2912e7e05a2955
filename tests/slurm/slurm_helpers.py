"""Helpers of tests/slurm: BoolQ fixture files and submitting/watching jobs on the local
cluster (slurm_fixtures.py starts it)."""

from __future__ import annotations

import json
import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from tests.distributed.train_helpers import REPO, write_task  # noqa: E402

# jobs a test waits for; generous: 2 shared cores
JOB_TIMEOUT = 300


def write_boolq(dirpath, n_train: int = 32, n_eval: int = 8) -> dict:
    """BoolQ-format copies of train_helpers.write_task's RTE files (premise -> passage,
    hypothesis -> question, entailment -> true): the same learnable cue, same rationales."""
    rte = write_task(os.path.join(dirpath, "rte"), n_train=n_train, n_eval=n_eval)
    paths = {"rationales": rte["rationales"]}
    for split in ("train", "eval"):
        paths[split] = os.path.join(dirpath, f"{split}.jsonl")
        with open(rte[split]) as src, open(paths[split], "w") as f:
            for row in map(json.loads, src):
                f.write(json.dumps({"idx": row["idx"], "passage": row["premise"], "question": row["hypothesis"],
                                    "label": row["label"] == "entailment"}) + "\n")
    return paths


# --------------------------------------------------------------------------------------
# jobs

def sbatch(env: dict, script: str, *args: str, sbatch_args=(), wait: bool = False,
           cwd: str = REPO) -> subprocess.CompletedProcess:
    """Submit ``slurm/<script>`` to the local cluster. No GPUs there: ``--gpus-per-node=0``
    overrides the script's header; one CPU per task so two jobs fit on the 2 fake nodes."""
    cmd = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", *sbatch_args]
    if wait:
        cmd.append("--wait")
    cmd += [os.path.join(REPO, "slurm", script), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=JOB_TIMEOUT + 60)


def job_env(slurm_env: dict, model: str, paths: dict, out_dir, extra: list, nproc: int = 1) -> dict:
    """The documented overrides of slurm/train.sh pointed at the fixtures (no export after
    training, unless a test asks for it: it is not what most tests look at)."""
    env = dict(slurm_env)
    env.update(DHRD_REPO=REPO, MODEL=str(model), TRAIN_FILE=paths["train"],
               EVAL_FILE=paths["eval"], RATIONALE_FILE=paths["rationales"],
               OUTPUT_DIR=str(out_dir), NPROC_PER_NODE=str(nproc), OMP_NUM_THREADS="1",
               EXTRA_ARGS=" ".join(map(str, extra)), EXPORT="none")
    for k in ("TEACHER_MODEL", "TEACHER_URL", "TEACHER_ARGS"):
        env.pop(k, None)
    return env


def job_log(logs_dir, job) -> str:
    """The job's output file (``--output=<logs_dir>/%x-%j.out``)."""
    import glob

    files = glob.glob(os.path.join(logs_dir, f"*-{job}.out"))
    if not files:
        return "(no log)"
    with open(files[0], errors="replace", newline="") as f:  # keep any carriage return a bar wrote
        return f.read()


def job_state(env: dict, job: str) -> tuple[str, str]:
    """(state, reason); ('', '') once Slurm has forgotten the job."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T %r"], env=env,
                         capture_output=True, text=True).stdout.split()
    return (out[0], out[1]) if len(out) >= 2 else ("", "")


def wait_for(pred, timeout: float = JOB_TIMEOUT, every: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def wait_job(env: dict, job: str, timeout: float = JOB_TIMEOUT) -> str:
    def ended():
        state = job_state(env, job)[0]
        return state if state in FINAL else None

    return wait_for(ended, timeout, what=f"job {job} to end")


def diagnostics(env: dict, job: str, lines: int = 40) -> str:
    """What Slurm itself says about a job that ended wrong: ``scontrol show job`` and the
    tails of the controller's and the nodes' logs (a job can fail before its script runs,
    leaving nothing in its own output)."""
    show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True)
    parts = [f"--- scontrol show job {job}\n{show.stdout}{show.stderr}"]
    log_dir = os.path.join(os.path.dirname(os.path.dirname(env["SLURM_CONF"])), "log")
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        if name.endswith(".log"):
            with open(os.path.join(log_dir, name), errors="replace") as f:
                parts.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
    return "\n".join(parts)


def train_steps(out_dir) -> list[int]:
    """Step numbers of the train rows of metrics.jsonl, in file order (duplicates kept)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip() and '"kind": "train"' in line]
