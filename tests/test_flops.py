"""StepFlops against torch's own FLOP counter on a real packed forward + backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dhrd.engine.flops import StepFlops, peak_tflops
from tests.helpers import tiny_backbone


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_step_flops_match_torch_flop_counter(arch):
    """Three segments through the decoder with eager attention (matmuls torch can count),
    the LM head on the supervised rows only, backward. torch counts every matmul as 2mnk;
    eager attention multiplies full n x n score matrices, i.e. twice the causal half our
    count keeps; everything else must agree exactly."""
    backbone = tiny_backbone(arch, attn="eager").train()
    lens = [7, 12, 5]
    vocab = backbone.config.vocab_size
    lm_rows = torch.tensor([3, 4, 5, 10, 11, 20, 21, 22])
    targets = torch.randint(0, vocab, (lm_rows.numel(),))
    with FlopCounterMode(display=False) as counter:
        hidden = torch.cat([backbone.base_model(input_ids=torch.randint(0, vocab, (1, k))).last_hidden_state[0]
                            for k in lens])
        logits = hidden[lm_rows] @ backbone.get_output_embeddings().weight.T
        F.cross_entropy(logits, targets).backward()
    flops = StepFlops.from_model(backbone)
    attention = flops(0, 0, sum(k * k for k in lens))
    assert attention > 0
    assert counter.get_total_flops() == pytest.approx(flops(sum(lens), lm_rows.numel(), 0) + 2 * attention,
                                                      rel=1e-9)


def test_step_flops_shapes_of_a_1b_llama():
    """The Llama-3.2-1B shape, counted from the meta device: 16 layers of 2048-wide
    attention (GQA 32/8 heads) and an 8192-wide MLP; the tied LM head is not a matmul weight."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                               vocab_size=128256, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    f = StepFlops.from_model(model)
    per_layer = 2048 * (2048 + 2 * 512 + 2048) + 3 * 2048 * 8192
    assert (f.matmul_params, f.vocab, f.hidden, f.layers, f.attn_width) == (16 * per_layer, 128256, 2048, 16, 2048)


def test_peak_tflops():
    assert peak_tflops(torch.device("cpu"), torch.bfloat16) is None
    assert peak_tflops(torch.device("cpu"), torch.float32, given=123.0) == 123.0
