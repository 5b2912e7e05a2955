"""Teacher rationales: generate them with a local HF model or any OpenAI-compatible
endpoint (``generate``), import released sets (``palm_cot``), and check them against the
gold labels (``consistency``).

A teacher is anything with ``name`` and ``generate(prompts)`` yielding ``(index,
Completion)`` pairs as each finishes, in any order: the driver writes each record the
moment it arrives, so a kill loses only what is still in flight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .prompts import Prompt


@dataclass(frozen=True)
class Completion:
    """What a teacher returned for one prompt. ``error`` is set (and ``text`` empty) when
    no text could be had at all: HTTP errors after retries, timeouts, a failed batch."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | None (unknown or error)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class Teacher(Protocol):
    name: str  # written to every record's "teacher" field

    def generate(self, prompts: Sequence["Prompt"]) -> Iterator[tuple[int, Completion]]:
        """Yield (index into prompts, completion) once per prompt, as each finishes."""
        ...

    def close(self) -> None: ...
