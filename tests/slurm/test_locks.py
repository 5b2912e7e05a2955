"""dhrd/engine/locks.py on job_lock: refuse a live holder with a message naming it, take over a
dead one (pid outside Slurm, job id under Slurm), one cache builder at a time."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from dhrd.engine import locks  # noqa: E402
from tests.slurm.slurm_helpers import job_state, wait_for, wait_job

pytest_plugins = ["tests.slurm.slurm_fixtures"]  # the cluster and data fixtures (not a conftest.py: see there)


def _write_lock(path, kind: str, ident, age_s: float = 5.0) -> None:
    import job_lock

    cpu = 0 if kind == "SLURM" else job_lock.jobinfo()[1]
    with open(path, "w") as f:
        f.write(f"{kind} {cpu} {ident}\nsomehost\n")
    t = time.time() - age_s  # older than the lock's minimum age, so its holder is checked
    os.utime(path, (t, t))


@pytest.fixture
def no_slurm_job(monkeypatch):
    """Run as an outside-Slurm process (pid-based locks), whatever runs the tests."""
    for k in ("SLURM_JOBID", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)


def test_output_lock_refuses_a_live_pid_and_takes_over_a_dead_one(tmp_path, no_slurm_job):
    path = tmp_path / locks.OUTPUT_LOCK
    live = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(path, sys.platform, live.pid)
        with pytest.raises(locks.OutputDirInUse, match=f"in use by pid {live.pid} on somehost"):
            locks.OutputDirLock(str(tmp_path)).acquire()
        assert path.exists()  # the live holder's lock is left alone
    finally:
        live.kill()
        live.wait()
    lock = locks.OutputDirLock(str(tmp_path)).acquire()  # its holder is dead now
    assert f"{sys.platform} " in path.read_text() and str(os.getpid()) in path.read_text()
    with pytest.raises(locks.OutputDirInUse, match=f"pid {os.getpid()}"):
        locks.OutputDirLock(str(tmp_path)).acquire()  # held: a second taker is refused
    lock.release()
    assert not path.exists()


def test_output_lock_follows_slurm_jobs_and_our_own_requeued_leftover(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    for k in ("SLURM_JOBID", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    path = tmp_path / locks.OUTPUT_LOCK
    run = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/sleep-%j.out", "--wrap", "sleep 120"],
                         env=slurm_cluster,
                         capture_output=True, text=True, check=True)
    live = run.stdout.strip()
    try:
        wait_for(lambda: job_state(slurm_cluster, live)[0] == "RUNNING", timeout=60, what="sleep job")
        _write_lock(path, "SLURM", live)
        with pytest.raises(locks.OutputDirInUse, match=f"in use by Slurm job {live} on somehost"):
            locks.OutputDirLock(str(tmp_path)).acquire()
        # the same job id as ours: a leftover of this job before its requeue, taken over
        monkeypatch.setenv("SLURM_JOBID", live)
        locks.OutputDirLock(str(tmp_path)).acquire().release()
        monkeypatch.delenv("SLURM_JOBID")
    finally:
        subprocess.run(["scancel", live], env=slurm_cluster, check=False)
    wait_job(slurm_cluster, live, timeout=60)
    _write_lock(path, "SLURM", live)  # its job is over: taken over
    import job_lock

    job_lock.clear_running_jobs_cache()  # job_lock remembers jobs it saw running
    locks.OutputDirLock(str(tmp_path)).acquire().release()


def _race_cache_builders(fixtures, cache_dir, counts, use_lock: bool, n: int = 2) -> tuple[list[str], int]:
    """Start n _cache_worker.py processes on one cache dir, release them together; the
    pid of every example tokenised, in order, and how many workers said they waited."""
    paths, go = fixtures["boolq"], str(cache_dir) + ".go"
    workers = [subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "_cache_worker.py"),
                                 fixtures["model"], paths["train"], paths["rationales"], str(cache_dir),
                                 str(counts), go, "1" if use_lock else "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(n)]
    wait_for(lambda: len(glob.glob(go + ".ready*")) == n or any(w.poll() is not None for w in workers),
             timeout=120, every=0.1, what="the workers' imports")
    open(go, "w").close()
    outs = [w.communicate(timeout=120) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
        assert out.split("\n")[-2] == "32", out  # every worker gets the whole training set
    waited = sum("another job is building the tokenised-data cache" in out for out, _ in outs)
    return counts.read_text().split(), waited


def test_cache_is_built_once_by_concurrent_jobs(fixtures, tmp_path, no_slurm_job):
    """Two jobs on one shared cache dir at the same moment: under cache_lock one of them
    tokenises the 32 examples and the other loads its cache file; without the lock
    (control) both tokenise."""
    built, waited = _race_cache_builders(fixtures, tmp_path / "cache", tmp_path / "counts", use_lock=True)
    assert len(built) == 32 and len(set(built)) == 1 and waited == 1, built
    assert len(list((tmp_path / "cache").glob("tokenized-*.arrow"))) == 1
    assert not (tmp_path / "cache" / locks.CACHE_LOCK).exists()
    built, waited = _race_cache_builders(fixtures, tmp_path / "cache2", tmp_path / "counts2", use_lock=False)
    assert len(built) == 64 and len(set(built)) == 2 and waited == 0, built
