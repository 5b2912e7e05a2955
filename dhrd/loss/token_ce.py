"""The per-token cross-entropy every LM-term implementation computes: soft-capping,
label smoothing and z-loss, with the softmax math in at least fp32."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CEOptions:
    """The per-token loss options (``token_cross_entropy``'s keywords)."""

    logit_softcap: float | None = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0


def upcast(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 for the softmax math; fp64 stays fp64 (for exact tests)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *,
                        logit_softcap: float | None = None, label_smoothing: float = 0.0,
                        z_loss: float = 0.0) -> torch.Tensor:
    """Per-token loss in fp32 for rows of logits: soft-capping (Gemma), label smoothing
    (torch's definition) and z-loss (z * logsumexp^2, PaLM) on request."""
    logits = upcast(logits)
    if logit_softcap:
        logits = logit_softcap * torch.tanh(logits / logit_softcap)
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(-1, targets[:, None]).squeeze(-1)
    if label_smoothing:
        smooth = lse - logits.mean(dim=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    if z_loss:
        nll = nll + z_loss * lse.square()
    return nll
