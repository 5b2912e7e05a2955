"""Stop at a step boundary on a signal, with a checkpoint, so the job can be requeued.

Slurm warns a job before its time limit with ``--signal=[B:]USR1@<seconds>``, and sends
TERM when it cancels or preempts one. A handler only records the signal; the train loop
asks ``PreemptionFlag.agreed`` after each optimizer step (an all-reduce MAX, so every
rank stops at the same step even if only some got the signal), saves a checkpoint, writes
``<output_dir>/preempted.json`` and raises ``Preempted`` (exit code ``EXIT_PREEMPTED``).

The marker file, not the exit code, tells the batch script what happened: launchers
(torchrun, deepspeed) turn a worker's exit code into their own. slurm/train.sh requeues
the job when the marker names USR1 (time is running out: come back and go on) and not
for TERM (scancel: the user wants the job gone; Slurm requeues preempted jobs itself).
The requeued job runs with ``--resume auto`` and starts from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading

from ..fileio import atomic_write_json

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
MARKER = "preempted.json"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(SystemExit):
    """Raised after the checkpoint is written; exits the process with EXIT_PREEMPTED."""

    def __init__(self, step: int, signum: int):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.signum = step, signum


class PreemptionFlag:
    """Installs handlers for ``signals`` that only remember the (highest) signal number;
    ``restore`` puts the previous handlers back."""

    def __init__(self, signals=SIGNALS):
        self.signum = 0
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; nothing to catch here
        for s in signals:
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = max(self.signum, int(signum))

    def agreed(self, all_reduce_max) -> int:
        """The signal any rank got (max over ranks), 0 if none. Collective: call it on
        every rank at the same point. ``all_reduce_max`` reduces a tensor in place."""
        import torch

        t = all_reduce_max(torch.tensor([float(self.signum)]))
        return int(t.item())

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def marker_path(output_dir: str) -> str:
    return os.path.join(output_dir, MARKER)


def clear_marker(output_dir: str) -> None:
    """At the start of a run: a marker from the previous (preempted) run is consumed."""
    try:
        os.remove(marker_path(output_dir))
    except FileNotFoundError:
        pass


def write_marker(output_dir: str, step: int, signum: int, checkpoint_tag: str) -> None:
    path = marker_path(output_dir)
    atomic_write_json(path, {"step": step, "signal": signal.Signals(signum).name, "checkpoint": checkpoint_tag,
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID")}, indent=None)


