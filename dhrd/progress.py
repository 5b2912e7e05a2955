"""Progress of long work a user waits on: a tqdm bar on a terminal, periodic plain lines
in a log.

A bar redraws itself with carriage returns; written to a file (a Slurm job's output, a
run's train.log) that becomes one unreadable line. So when the stream is not a terminal
the same object prints one whole line every ``every`` seconds, on the first update and
at the end instead: ``train 120/252 (47.6%) | cls 0.693 | lm 2.310 | 6.1 ex/s |
elapsed 1m02s | ETA 1m08s``. ``DHRD_PROGRESS_EVERY`` (seconds, default 30) sets the
period for every such log.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import time

DEFAULT_EVERY = 30.0


def log_every() -> float:
    """Seconds between two progress lines in a log (``DHRD_PROGRESS_EVERY``)."""
    value = os.environ.get("DHRD_PROGRESS_EVERY", "")
    try:
        return max(float(value), 0.0) if value else DEFAULT_EVERY
    except ValueError:
        raise ValueError(f"DHRD_PROGRESS_EVERY={value!r}: give seconds, e.g. 30") from None


def duration(seconds: float) -> str:
    """Compact h/m/s: 9s, 4m05s, 2h03m."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _value(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def status_line(desc: str, n: int, total: int, stats: dict, elapsed: float, rate: float) -> str:
    """One progress line: position, the caller's stats, elapsed time and ETA from ``rate``
    (units per second)."""
    pos = f"{desc} {n}/{total} ({100 * n / total:.1f}%)" if total else f"{desc} {n}"
    parts = [pos, *(f"{k} {_value(v)}" for k, v in stats.items() if v is not None), f"elapsed {duration(elapsed)}"]
    if total and n < total:
        parts.append(f"ETA {duration((total - n) / rate) if rate > 0 else '?'}")
    return " | ".join(parts)


class Progress:
    """``update(n, **stats)`` per unit of work done, ``close()`` at the end. ``stats`` are
    shown as given (their latest values). ``enabled=False``: silent."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0, prefix: str = "",
                 stream=None, enabled: bool = True, every: float | None = None, bar: bool | None = None):
        self.total, self.desc, self.unit, self.prefix = total, desc, unit, prefix
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.n = self.initial = initial
        self.stats: dict = {}
        self.start = time.monotonic()
        self.last_line = None  # monotonic time of the last line written (None: none yet)
        self.last_n = initial  # the position that line showed
        self.every = log_every() if every is None else every
        self.bar = None
        use_bar = bar if bar is not None else is_terminal(self.stream)
        if enabled and use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, initial=initial, desc=prefix + desc, unit=unit,
                            dynamic_ncols=True, file=self.stream)

    def rate(self) -> float:
        """Units per second in this process (work done before ``initial`` not counted)."""
        return (self.n - self.initial) / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        return self.prefix + status_line(self.desc, self.n, self.total,
                                         {**self.stats, f"{self.unit}/s": round(self.rate(), 3)},
                                         time.monotonic() - self.start, self.rate())

    def update(self, n: int = 1, **stats) -> None:
        if not self.enabled:
            return
        self.n += n
        self.stats.update(stats)
        if self.bar is not None:
            self.bar.update(n)
            if stats:
                self.bar.set_postfix({k: _value(v) for k, v in self.stats.items() if v is not None}, refresh=False)
            return
        now = time.monotonic()
        if self.last_line is None or now - self.last_line >= self.every or (self.total and self.n >= self.total):
            self._write()  # the first, one a period, and the last (before whatever follows the work)

    def _write(self) -> None:
        self.last_line, self.last_n = time.monotonic(), self.n
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n != self.last_n:
            self._write()  # the final position, unless the last line showed it
        self.enabled = False


@contextlib.contextmanager
def stage(what: str, stream=None):
    """A long step with no steps to count (a model conversion): one line when it starts,
    one with its time when it ends, so a user (or a log) sees what it is waiting on."""
    stream = stream if stream is not None else sys.stderr
    print(f"{what} ...", file=stream, flush=True)
    t0 = time.monotonic()
    yield
    print(f"{what}: done in {duration(time.monotonic() - t0)}", file=stream, flush=True)


def quiet_library_bars(stream=None) -> bool:
    """When ``stream`` (stderr) is not a terminal, turn off the tqdm bars of transformers
    (loading and writing weights), huggingface_hub and datasets (``map``): in a log they
    are carriage-return mess; our own progress prints plain lines there. True if it did.
    Sets the libraries' variables (read at their import; children inherit them) and
    tells the ones already imported."""
    if is_terminal(stream if stream is not None else sys.stderr):
        return False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for package, module, func in (("huggingface_hub", "huggingface_hub.utils", "disable_progress_bars"),
                                  ("datasets", "datasets.utils.logging", "disable_progress_bar"),
                                  ("transformers", "transformers.utils.logging", "disable_progress_bar")):
        if package in sys.modules:  # imported already: it read the variable before we set it
            getattr(importlib.import_module(module), func)()
    return True


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (a bar can redraw itself there)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
