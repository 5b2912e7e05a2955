"""Locks across jobs and nodes, on the shared file system, with ``job_lock`` (PyPI
``slurm-python-utils``).

A ``job_lock.JobLock`` is a file created with O_EXCL that names its holder: under Slurm
``SLURM 0 <job id>``, elsewhere ``<platform> <machine id> <pid>``. A lock file whose
holder is dead is taken over: for a Slurm holder ``squeue --job`` no longer lists it (or
lists it PENDING: requeued), for a pid holder on this machine the pid is gone. So a
crashed run never leaves a lock behind for good, and runs outside Slurm are guarded by
pid. Only global rank 0 takes these locks.

* ``OutputDirLock``: one run per output directory. A second job on the same
  ``--output_dir`` stops with a clear message while the first is alive.
  The experiment harness claims a run's directory the same way (another file name)
  before it starts the run, so two harnesses on one root never start the same run.
* ``cache_lock``: the tokenised-data cache is built by one job at a time; the others wait
  and then load what it wrote (the cache key covers data, tokenizer and spec).

A requeued Slurm job keeps its job id, and if it was killed hard its old lock file is
still there naming that very id, which ``squeue`` shows RUNNING again: such a lock is our
own leftover and is removed (``_drop_own_leftover``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time

import job_lock

OUTPUT_LOCK = ".dhrd-output.lock"
CACHE_LOCK = ".dhrd-cache-build.lock"
# the lock file is written right after O_EXCL creation; a holder is checked for life only
# once the file is this old (job_lock's default is 10 s: a second is plenty here)
_MIN_AGE = datetime.timedelta(seconds=1)


def _young(path: str) -> float:
    """Seconds until a lock file is old enough for its holder to be checked (0: it is; a
    file gone meanwhile: try again at once)."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.01
    return max(0.0, _MIN_AGE.total_seconds() + 0.2 - age)


class OutputDirInUse(RuntimeError):
    pass


def holder(path: str) -> tuple[str, str]:
    """('SLURM job 123' / 'pid 456', host) of a lock file, for messages."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
        kind, _, ident = lines[0].split()
        who = f"Slurm job {ident}" if kind == "SLURM" else f"pid {ident}"
        return who, (lines[1] if len(lines) > 1 and lines[1] else "?")
    except (OSError, ValueError):
        return "an unknown process", "?"


def _drop_own_leftover(path: str) -> None:
    """Remove a lock file left by an earlier run of THIS Slurm job (before a requeue)."""
    lock = job_lock.JobLock(path)
    kind, cpu, ident = lock.runningjobinfo()
    mine = job_lock.jobinfo()
    if kind == "SLURM" and (kind, cpu, str(ident)) == (mine[0], mine[1], str(mine[2])):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class OutputDirLock:
    """Held from the start of a run to its end (``release``, also at interpreter exit).
    ``acquire`` raises ``OutputDirInUse`` when a live job holds the directory."""

    def __init__(self, output_dir: str, name: str = OUTPUT_LOCK):
        self.path = os.path.join(output_dir, name)
        self._stack: contextlib.ExitStack | None = None

    def acquire(self) -> OutputDirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _drop_own_leftover(self.path)
        for attempt in range(2):
            stack = contextlib.ExitStack()
            lock = stack.enter_context(job_lock.JobLock(self.path, minimumtimeforiterativelocks=_MIN_AGE))
            wait = 0.0 if lock or attempt else _young(self.path)
            if not wait:
                break
            stack.close()  # too young to be checked for life (a holder killed just now looks alive)
            time.sleep(wait)
        if not lock:
            stack.close()
            who, host = holder(self.path)
            raise OutputDirInUse(
                f"output dir {os.path.dirname(self.path)} is in use by {who} on {host} "
                f"(lock file {self.path}). Wait for that run to end, cancel it, or pick another "
                f"--output_dir. A lock whose job is dead is taken over automatically.")
        self._stack = stack
        return self

    def release(self) -> None:
        if self._stack is not None:
            self._stack.close()  # JobLock.__exit__ removes the file
            self._stack = None


def cache_lock(cache_dir: str, delay: float = 2.0):
    """Context manager: wait until no live job is building the cache in ``cache_dir``,
    then hold the lock while this process builds (or loads) it."""
    path = os.path.join(cache_dir, CACHE_LOCK)
    os.makedirs(cache_dir, exist_ok=True)
    _drop_own_leftover(path)
    return job_lock.JobLockAndWait(
        path, delay, minimumtimeforiterativelocks=_MIN_AGE,
        printmessage=f"[dhrd] another job is building the tokenised-data cache in {cache_dir}; "
                     f"waiting {delay:g} s")


def lock_output_dir(output_dir: str, rank: int, reduce_max) -> OutputDirLock:
    """Collective. Rank 0 takes the output-dir lock; if it cannot, every rank exits with
    the message (``reduce_max`` all-reduces a 1-element tensor with MAX)."""
    import atexit

    import torch

    lock, err = OutputDirLock(output_dir), ""
    if rank == 0:
        try:
            lock.acquire()
        except OutputDirInUse as e:
            err = str(e)
    if reduce_max(torch.tensor([1.0 if err else 0.0])).item():
        raise SystemExit(f"error: {err}" if err else "error: the output dir is in use (rank 0 says by whom)")
    atexit.register(lock.release)  # also on exits before the train loop's finally
    return lock
