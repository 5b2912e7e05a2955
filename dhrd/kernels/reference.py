"""The dual-head loss, unfused and obviously correct: the oracle the fused kernels are
tested against.

    L = beta * CE(cls_logits, cls_labels) / n_cls + alpha * sum_t CE_t(h_t W^T, y_t) / n_lm

Both terms are divided by counts passed in from outside (global across ranks and
micro-steps), so packing and sharding do not change the gradient. Only supervised rows
are projected onto the vocabulary, but their logits are materialised in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    """Total loss (differentiable) and its two terms, each already normalised."""

    total: torch.Tensor
    cls: torch.Tensor
    lm: torch.Tensor


def count_supervised(lm_targets: torch.Tensor, ignore_index: int = -100) -> int:
    return int((lm_targets != ignore_index).sum())


def count_labelled(cls_labels: torch.Tensor, ignore_index: int = -100) -> int:
    return int((cls_labels != ignore_index).sum())


def zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0 that depends on every tensor, so every parameter still gets a (zero) gradient:
    under ZeRO-3 a rank with nothing to supervise must run the same backward as the others."""
    out = None
    for t in tensors:
        if t is not None and t.requires_grad:
            term = t.sum() * 0.0
            out = term if out is None else out + term
    if out is None:
        dev = next((t.device for t in tensors if t is not None), "cpu")
        out = torch.zeros((), device=dev)
    return upcast(out)


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


def reference_dual_head_loss(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    lm_targets: torch.Tensor,
    cls_logits: torch.Tensor,
    cls_labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    n_lm_tokens: int | float | torch.Tensor | None = None,
    n_cls: int | float | torch.Tensor | None = None,
    lm_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    logit_softcap: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> LossOutput:
    """hidden [..., H] and lm_targets [...] (next-token ids, ``ignore_index`` where not
    supervised); lm_weight [V, H]; cls_logits [S, C]; cls_labels [S].

    ``n_lm_tokens`` / ``n_cls`` default to the local counts; pass the global ones when
    the batch is one of several micro-batches or ranks of an optimizer step.
    """
    def lm_term(flat_h, rows, targets, n):
        logits = flat_h.index_select(0, rows) @ lm_weight.t()
        if lm_bias is not None:
            logits = logits + lm_bias
        per_token = token_cross_entropy(logits, targets, logit_softcap=logit_softcap,
                                        label_smoothing=label_smoothing, z_loss=z_loss)
        return per_token.sum() / n

    return combine_terms(lm_term, hidden, lm_weight, lm_targets, cls_logits, cls_labels,
                         alpha=alpha, beta=beta, n_lm_tokens=n_lm_tokens, n_cls=n_cls,
                         lm_bias=lm_bias, ignore_index=ignore_index)


def combine_terms(lm_term, hidden, lm_weight, lm_targets, cls_logits, cls_labels, *, alpha,
                  beta, n_lm_tokens, n_cls, lm_bias, ignore_index) -> LossOutput:
    """What every implementation shares: the classification term, the supervised rows,
    the counts, and a zero connected to every input where nothing is supervised (under
    ZeRO-3 such a rank must run the same backward as the others). ``lm_term(flat_h,
    rows, targets, n_lm_tokens)`` computes the normalised LM term over the supervised
    ``rows`` of ``flat_h`` [N, H] with their ``targets``."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = lm_targets.reshape(-1)

    labelled = cls_labels != ignore_index
    if n_cls is None:
        n_cls = int(labelled.sum())
    if beta and bool(labelled.any()):
        cls_sum = F.cross_entropy(upcast(cls_logits), cls_labels, ignore_index=ignore_index,
                                  reduction="sum")
        cls = cls_sum / n_cls
    else:
        cls = zero_like_graph(cls_logits)

    rows = (flat_t != ignore_index).nonzero().squeeze(-1)
    if n_lm_tokens is None:
        n_lm_tokens = rows.numel()
    if alpha and rows.numel():
        lm = lm_term(flat_h, rows, flat_t.index_select(0, rows), n_lm_tokens)
    elif alpha:
        lm = zero_like_graph(flat_h, lm_weight, lm_bias)
    else:
        lm = torch.zeros((), device=hidden.device)

    total = beta * cls + alpha * lm
    return LossOutput(total=total, cls=cls.detach(), lm=lm.detach())
