"""SIGINT/SIGTERM for a generation run (Slurm preemption, timeouts, Ctrl-C): stop like
Ctrl-C, but never between writing a record and counting it, so the summary counts every
record on disk. The state belongs to one run's :class:`Interrupts` (not the module), so
a second run in the same process, or a test, starts with none seen."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupts:
    def __init__(self):
        self.depth = 0  # nesting of record sections
        self.pending = False  # a signal arrived inside a section
        self.interrupted = False

    def handle(self, signum, frame) -> None:
        """The signal handler: KeyboardInterrupt now, or at the end of the record
        section it arrived in. Only the first signal counts: a second one (Slurm signals
        the job's processes and the job script forwards to them too) must not cut the
        summary short."""
        if self.interrupted:
            return
        if self.depth:
            self.pending = True
            return
        self.interrupted = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """Write a record and count it: an interrupt inside waits for the end."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending, self.interrupted = False, True
                raise KeyboardInterrupt

    def install(self) -> None:
        """``handle`` as the process's SIGTERM and SIGINT handler (main thread only), for
        good: a late second signal, while the summary is printed, must not kill the
        process either."""
        for s in SIGNALS:
            signal.signal(s, self.handle)
