"""The alpha schedules, and the engine moving alpha by them (logged as train/alpha)."""

from __future__ import annotations

import math

import pytest

from dhrd.alpha_schedule import alpha_at
from dhrd.config import LossArgs
from tests.distributed.train_helpers import losses, run_train, write_model, write_task  # noqa: E402


def test_schedules():
    assert [alpha_at(s, 5, 1.0) for s in range(5)] == [1.0] * 5
    assert [alpha_at(s, 5, 1.0, "linear", 0.2) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    cos = [alpha_at(s, 5, 1.0, "cosine") for s in range(5)]
    assert cos[0] == 1.0 and cos[-1] == pytest.approx(0.0) and cos[2] == pytest.approx(0.5)
    assert cos == sorted(cos, reverse=True) and not math.isclose(cos[1], 0.75)
    assert [alpha_at(s, 10, 0.5, "step", 0.1, 0.3) for s in range(10)] == [0.5] * 3 + [0.1] * 7
    assert alpha_at(3, 10, 0.0, "linear", 0.0) == 0.0  # pooled stays pooled
    # ramp: the classifier first, the LM term ramped in to alpha by the switch point, then alpha
    assert [alpha_at(s, 10, 1.0, "ramp", 0.0, 0.4) for s in range(10)] == pytest.approx(
        [0.0, 0.25, 0.5, 0.75] + [1.0] * 6)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="alpha_schedule='warp'"):
        LossArgs(alpha_schedule="warp")
    with pytest.raises(ValueError, match="alpha_floor=2.0 must be in"):
        LossArgs(alpha=1.0, alpha_schedule="linear", alpha_floor=2.0)
    with pytest.raises(ValueError, match="alpha_switch_fraction"):
        LossArgs(alpha_schedule="step", alpha_switch_fraction=1.5)


def test_engine_follows_the_schedule(tmp_path):
    paths, model = write_task(tmp_path / "data"), write_model(tmp_path / "model")
    out = tmp_path / "run"
    proc = run_train(model, paths, out, "--max_steps", 6, "--micro_batches_per_step", 2, "--method", "dhrd",
                     "--alpha", 1, "--alpha_schedule", "step", "--alpha_switch_fraction", 0.5, "--alpha_floor", 0.1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alphas = losses(out, "train/alpha")
    assert [alphas[s] for s in range(1, 7)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
