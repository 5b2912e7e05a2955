"""Monitor: TensorBoard events read back with tensorboard's EventAccumulator, the
metrics.jsonl log, and silence on ranks other than 0."""

from __future__ import annotations

import json
import os


def test_scalars_text_and_hparams_are_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dhrd.engine.monitor import Monitor

    m = Monitor(0, str(tmp_path), total_steps=2, progress=False)
    for step in (1, 2):
        m.scalars(step, {"train/loss_total": 3.0 / step, "train/lr": 1e-3, "perf/real_tokens_per_s": 100.0})
    m.scalars(2, {"eval/accuracy": 0.75}, kind="eval")
    m.text("train/sequences", "<s> x <REASON> r <ANS> yes", 0)
    m.hparams({"alpha": 1.0, "beta": 1.0, "task": "rte", "backbone": "tiny"}, {"hparam/accuracy": 0.75})
    m.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss_total")] == [3.0, 1.5]
    assert acc.Scalars("eval/accuracy")[0].value == 0.75
    assert "train/sequences/text_summary" in acc.Tags()["tensors"]
    assert "hparams" in os.listdir(tmp_path / "tensorboard")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["kind"] for r in rows] == ["train", "train", "eval"] and rows[1]["train/loss_total"] == 1.5


def test_other_ranks_write_nothing(tmp_path, capsys):
    from dhrd.engine.monitor import Monitor

    m = Monitor(1, str(tmp_path / "r1"), progress=True)
    m.scalars(1, {"train/loss_total": 1.0})
    m.text("t", "x", 0)
    m.advance()
    m.close()
    assert not (tmp_path / "r1").exists()
    assert capsys.readouterr().err == ""  # no progress line either (messages: tests/test_logs.py)
