"""CUDA path of the fused LM loss: the chunk loop and cuBLAS matmuls of ``chunked``, with
the per-chunk "logits -> d loss / d logits" step fused into one Triton kernel.

Per supervised row the kernel makes one sweep over the logits with an online
log-sum-exp (and the row sum, for label smoothing), computes the loss (soft-capping,
label smoothing, z-loss), then a second sweep overwrites the logits in place with
their gradient, in the logits' dtype: no fp32 copy and no second [chunk x V] buffer
exist, unlike the pure-PyTorch step.

The module imports ``triton`` at the top: import it only where triton is installed
(``dhrd.loss`` registers it as "triton" only with CUDA). The kernel also runs under
Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before importing this module) on
CPU tensors, which is how the tests check it on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunked import fused_lm_term
from .token_ce import CEOptions

# Per-chunk logits buffer. Larger than the CPU default: every chunk re-reads and rewrites
# the fp32 [V, H] weight-gradient accumulator, which at V=262144, H=2048 costs as much
# HBM time as the chunk's three matmuls at ~300 rows; 512 MiB gives 1024 rows there.
DEFAULT_MEMORY_BUDGET = 512 * 2**20
MAX_BLOCK = 32768


@triton.jit
def _tanh(x):
    # from exp, stable for any x (libdevice's tanh does not exist in the interpreter)
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _ce_grad_kernel(logits_ptr, stride, targets_ptr, loss_ptr, V, softcap, smoothing, z_loss,
                    HAS_SOFTCAP: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_Z: tl.constexpr,
                    BLOCK: tl.constexpr):
    """One program per row: loss[row] = per-token loss, logits[row] <- d loss / d logits."""
    row = tl.program_id(0).to(tl.int64)
    ptr = logits_ptr + row * stride
    y = tl.load(targets_ptr + row)
    cols = tl.arange(0, BLOCK)

    m = tl.full([], float("-inf"), tl.float32)   # running max
    d = tl.full([], 0.0, tl.float32)             # running sum of exp(s - m)
    total = tl.full([], 0.0, tl.float32)         # running sum of s (label smoothing)
    for v0 in range(0, V, BLOCK):
        idx = v0 + cols
        mask = idx < V
        s = tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            s = softcap * _tanh(s / softcap)
        if HAS_SMOOTHING:
            total += tl.sum(tl.where(mask, s, 0.0), 0)
        s = tl.where(mask, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new), 0)
        m = m_new
    lse = m + tl.log(d)

    s_y = tl.load(ptr + y).to(tl.float32)
    if HAS_SOFTCAP:
        s_y = softcap * _tanh(s_y / softcap)
    loss = lse - (1.0 - smoothing) * s_y
    if HAS_SMOOTHING:
        loss -= smoothing * total / V
    p_scale = 1.0
    if HAS_Z:
        loss += z_loss * lse * lse
        p_scale = 1.0 + 2.0 * z_loss * lse
    tl.store(loss_ptr + row, loss)

    for v0 in range(0, V, BLOCK):
        idx = v0 + cols
        mask = idx < V
        z = tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            t = _tanh(z / softcap)
            s = softcap * t
        else:
            s = z
        g = tl.exp(s - lse) * p_scale
        if HAS_SMOOTHING:
            g -= smoothing / V
        g = tl.where(idx == y, g - (1.0 - smoothing), g)
        if HAS_SOFTCAP:
            g = g * (1.0 - t * t)
        tl.store(ptr + idx, g.to(logits_ptr.dtype.element_ty), mask=mask)


class TritonChunkStep:
    """The per-chunk step of ``FusedLinearCrossEntropy`` as one kernel launch, in place
    on the logits buffer (its only per-row memory)."""

    MIN_ROWS = 1   # the 512 MiB default budget already gives ~1000 rows at V=262144

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device, opts: CEOptions):
        self.opts = opts
        self.loss = torch.empty(rows, dtype=torch.float32, device=device)
        self.block = min(MAX_BLOCK, triton.next_power_of_2(vocab))

    @staticmethod
    def bytes_per_row(vocab: int, dtype: torch.dtype, opts: CEOptions) -> int:
        return vocab * torch.empty((), dtype=dtype).element_size()

    def grad32(self, c: int) -> None:
        return None          # the gradient exists only in the logits' dtype

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        o = self.opts
        c, vocab = logits.shape
        loss = self.loss[:c]
        _ce_grad_kernel[(c,)](
            logits, logits.stride(0), targets, loss, vocab, float(o.logit_softcap or 1.0),
            float(o.label_smoothing), float(o.z_loss), HAS_SOFTCAP=bool(o.logit_softcap),
            HAS_SMOOTHING=bool(o.label_smoothing), HAS_Z=bool(o.z_loss), BLOCK=self.block,
            num_warps=32 if self.block >= 8192 else 8)
        return loss


triton_lm_term = fused_lm_term(
    "triton_lm_term", TritonChunkStep, DEFAULT_MEMORY_BUDGET, """\
``reference_lm_term`` with the per-chunk softmax step fused into one kernel (see module
docstring); the chunking knobs of ``chunked_lm_term``. The softmax math is fp32 whatever
the input dtype (fp64 inputs included).""")
