"""Crash-safe checkpoint bookkeeping with a stand-in for DeepSpeed's engine (the real
engine is exercised by the kill -9 test in tests/distributed)."""

from __future__ import annotations

import os
import random

import pytest
import torch

from dhrd.engine import checkpoint


class FakeEngine:
    """Writes/reads one file per tag the way DeepSpeed's save/load_checkpoint do."""

    def __init__(self):
        self.value = 0

    def zero_optimization_stage(self):  # recorded in the marker (export reads stage 0 differently)
        return 2

    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False  # ``latest`` is ours, written after the marker
        os.makedirs(os.path.join(root, tag), exist_ok=True)
        torch.save({"value": self.value, "client": client_state}, os.path.join(root, tag, "model.pt"))

    def load_checkpoint(self, root, tag, load_optimizer_states, load_lr_scheduler_states):
        blob = torch.load(os.path.join(root, tag, "model.pt"), weights_only=False)
        self.value = blob["value"]
        return os.path.join(root, tag), blob["client"]


def test_save_load_restores_state_and_rng(tmp_path):
    eng = FakeEngine()
    eng.value = 5
    torch.manual_seed(1)
    random.seed(2)
    checkpoint.save(eng, str(tmp_path), 3, {"step": 3, "epoch": 0, "micro_index": 12}, rank=0, world=1, keep=2)
    expected = (torch.rand(3), random.random())
    eng2 = FakeEngine()
    state = checkpoint.load(eng2, str(tmp_path), checkpoint.find_resumable(str(tmp_path)), rank=0)
    assert state["step"] == 3 and state["micro_index"] == 12 and eng2.value == 5
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_keeps_last_k_and_skips_incomplete(tmp_path):
    eng = FakeEngine()
    root = str(tmp_path)
    for step in (2, 4, 6):
        checkpoint.save(eng, root, step, {"step": step}, rank=0, world=1, keep=2)
    assert checkpoint.complete_tags(root) == ["step_00000004", "step_00000006"]
    # a save killed half-way: tag dir written, no marker, and (worst case) latest pointing at it
    os.makedirs(os.path.join(root, "step_00000008"))
    with open(os.path.join(root, "latest"), "w") as f:
        f.write("step_00000008")
    assert checkpoint.find_resumable(root) == "step_00000006"
    with pytest.raises(RuntimeError, match="incomplete"):
        checkpoint.load(eng, root, "step_00000008", rank=0)
    checkpoint.save(eng, root, 10, {"step": 10}, rank=0, world=1, keep=2)
    assert sorted(t for t in os.listdir(root) if t.startswith("step_")) == ["step_00000006", "step_00000010"]


def test_nothing_to_resume(tmp_path):
    assert checkpoint.find_resumable(str(tmp_path / "none")) is None
