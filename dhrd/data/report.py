"""A data report that counts every example and every skipped record by reason, so
nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..fileio import atomic_write_json


@dataclass
class DataReport:
    """Counters keyed by a short reason name, plus a few examples of each skip.

    ``count(reason)`` is for things that happened (``used``, ``truncated``);
    ``skip(reason, where)`` is for records left out, with where they came from.
    """

    counts: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    max_samples: int = 5

    def count(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def skip(self, reason: str, where: str) -> None:
        self.counts[f"skipped/{reason}"] += 1
        kept = self.samples.setdefault(reason, [])
        if len(kept) < self.max_samples:
            kept.append(where)

    def merge(self, other: "DataReport") -> "DataReport":
        self.counts.update(other.counts)
        for reason, where in other.samples.items():
            kept = self.samples.setdefault(reason, [])
            kept.extend(where[: max(0, self.max_samples - len(kept))])
        return self

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "samples": self.samples}

    def write(self, path) -> None:
        atomic_write_json(path, self.to_dict(), indent=2)

    def format(self) -> str:
        width = max((len(k) for k in self.counts), default=0)
        lines = [f"  {k:<{width}}  {v}" for k, v in sorted(self.counts.items())]
        for reason, where in self.samples.items():
            lines.append(f"  e.g. {reason}: {', '.join(where)}")
        return "data report:\n" + "\n".join(lines)
