"""Model FLOPs of a training step, for achieved TFLOP/s and model FLOP utilisation (MFU).

Counted as useful work only (what the model needs, not what a kernel happens to do):

* every real token passes every decoder matmul once forward and twice backward:
  ``6 * P`` with P the decoder's matmul weights (attention and MLP projections; not the
  embedding table, not the LM head);
* the LM head runs on supervised tokens only (the DHRD loss projects nothing else):
  ``6 * V * H`` per supervised token;
* causal attention within each packed segment of length n: QK^T and PV over the n^2/2
  pairs, ``2 * n^2 * d_attn`` forward per layer, x3 with backward.

Masked or padded work, activation recomputation and the classifier head are not counted,
so MFU is comparable across packing, attention kernels and checkpointing settings. With
LoRA the frozen weights need no weight gradient (about 4P, not 6P): MFU then overstates
the arithmetic the GPU has to do, as it does in every convention that counts 6N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# dense bf16/fp16 matrix peak (TFLOP/s, vendor datasheet, SXM parts) by device-name substring
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions hold a 0-size placeholder


@dataclass(frozen=True)
class StepFlops:
    matmul_params: int    # decoder matmul weights per token (no embedding, no LM head)
    vocab: int
    hidden: int
    layers: int
    attn_width: int       # query heads x head dim

    @classmethod
    def from_model(cls, backbone: nn.Module) -> "StepFlops":
        """Reads the shapes off the backbone (works on ZeRO-3 partitioned parameters and on
        peft-wrapped models: LoRA's own small matrices are counted, the LM head is not)."""
        from transformers.pytorch_utils import Conv1D  # GPT-2's projections

        cfg = backbone.config
        head = backbone.get_output_embeddings()
        head_weight = head.weight if head is not None else None
        matmul = sum(_numel(m.weight) for m in backbone.modules()
                     if isinstance(m, (nn.Linear, Conv1D)) and m.weight is not head_weight)
        hidden = cfg.hidden_size
        heads = getattr(cfg, "num_attention_heads", 0) or 0
        head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if heads else 0)
        vocab = int(head_weight.ds_shape[0] if hasattr(head_weight, "ds_shape") else head_weight.shape[0]) \
            if head_weight is not None else cfg.vocab_size
        return cls(matmul, vocab, hidden, cfg.num_hidden_layers, heads * head_dim)

    def __call__(self, n_tokens: float, n_lm_tokens: float, sum_sq_segment_len: float) -> float:
        """FLOPs of forward + backward over ``n_tokens`` real tokens, ``n_lm_tokens`` of
        them supervised by the LM head, in segments whose squared lengths sum as given."""
        return (6.0 * self.matmul_params * n_tokens + 6.0 * self.vocab * self.hidden * n_lm_tokens
                + 6.0 * self.layers * self.attn_width * sum_sq_segment_len)


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float = 0.0) -> float | None:
    """``given`` if set; else the datasheet bf16 peak of a known CUDA device when training
    in 16-bit; else None (no MFU is logged: a CPU has no meaningful single figure)."""
    if given > 0:
        return given
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
