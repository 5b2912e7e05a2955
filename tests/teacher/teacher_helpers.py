"""Small task files and an in-process fake teacher for the teacher tests."""

from __future__ import annotations

import json

from dhrd.data.rationales import END_MARKER
from dhrd.teacher import Completion

CB_LABELS = ("entailment", "contradiction", "neutral")


def write_cb(path, n: int, start: int = 0):
    """n CB rows; each premise carries ID<idx> so a stub server can tell examples apart."""
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"premise": f"ID{i} a cat sat", "hypothesis": "a cat", "idx": i,
                                "label": CB_LABELS[i % 3]}) + "\n")
    return path


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class FakeTeacher:
    """Answers every prompt at once with text made by ``make(prompt)``."""

    name = "fake"

    def __init__(self, make=lambda prompt: f"because. {END_MARKER}"):
        self.make = make
        self.seen = []

    def generate(self, prompts):
        for i, p in enumerate(prompts):
            self.seen.append(p)
            yield i, Completion(self.make(p), "stop", 5, 3)

    def close(self):
        pass
