"""--compile: decoder blocks compiled in place give eager's outputs and gradients, keep
parameter names, train through the real engine, and are refused with ZeRO-3."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dhrd.engine.ds_config import check_train_settings, load_ds_config
from dhrd.model.compile import compile_blocks, decoder_blocks
from tests.distributed.train_helpers import losses, run_train, write_model, write_task
from tests.helpers import tiny_backbone


def _loss_and_grads(model, ids, pos):
    model.zero_grad()
    h = model.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    loss = h.pow(2).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_blocks_equal_eager_on_packed_rows():
    eager, compiled = tiny_backbone("llama", "dhrd_segments"), tiny_backbone("llama", "dhrd_segments")
    names = [n for n, _ in compiled.named_parameters()]
    assert compile_blocks(compiled) == compiled.config.num_hidden_layers
    assert [n for n, _ in compiled.named_parameters()] == names  # checkpoints and exports unchanged
    ids = torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(10), torch.arange(14)])[None]
    want_loss, want = _loss_and_grads(eager, ids, pos)
    got_loss, got = _loss_and_grads(compiled, ids, pos)
    assert got_loss == pytest.approx(want_loss, rel=1e-5) and got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name


def test_a_model_without_a_block_list_is_named():
    m = nn.Linear(2, 2)
    m.config = type("C", (), {"num_hidden_layers": 2})()
    with pytest.raises(ValueError, match="no list of 2 decoder blocks found in Linear"):
        decoder_blocks(m)


def test_compile_with_zero3_is_refused():
    with pytest.raises(ValueError, match="--compile with ZeRO-3"):
        check_train_settings(load_ds_config("ds_configs/zero3.json"), "auto", "none", compile=True)
    check_train_settings(load_ds_config(None), "auto", "none", compile=True)  # stage auto: fine


@pytest.mark.slow
def test_training_with_compile(tmp_path):
    paths, model = write_task(tmp_path / "data"), write_model(tmp_path / "model")
    proc = run_train(model, paths, tmp_path / "out", "--max_steps", 3, "--compile", "true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "decoder blocks compiled in place" in proc.stderr + proc.stdout
    assert len(losses(tmp_path / "out")) == 3 and all(v == v for v in losses(tmp_path / "out").values())
