"""The dual-head objective, the one formula of the method:

    L = beta * CE(cls_logits, cls_labels) / n_cls + alpha * sum_t CE_t(h_t W^T, y_t) / n_lm

Both terms are divided by counts passed in from outside (global across ranks and
micro-steps), so packing and sharding do not change the gradient. The classification
term is computed here; the LM term by the implementation ``impl`` names (lm_terms.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from .lm_terms import LM_TERMS, resolve_impl
from .token_ce import CEOptions, upcast


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


def zero_like_graph(*tensors: torch.Tensor | None) -> torch.Tensor:
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


def dual_head_loss(hidden: torch.Tensor, lm_weight: torch.Tensor, lm_targets: torch.Tensor,
                   cls_logits: torch.Tensor, cls_labels: torch.Tensor, *, alpha: float = 1.0, beta: float = 1.0,
                   n_lm_tokens=None, n_cls=None, lm_bias: torch.Tensor | None = None, ignore_index: int = -100,
                   impl: str | Callable = "auto", logit_softcap: float | None = None,
                   label_smoothing: float = 0.0, z_loss: float = 0.0, **lm_options) -> LossOutput:
    """hidden [..., H] and lm_targets [...] (next-token ids, ``ignore_index`` where not
    supervised); lm_weight [V, H]; cls_logits [S, C]; cls_labels [S]. ``n_lm_tokens`` /
    ``n_cls`` default to the local counts: pass the global ones when the batch is one of
    several micro-batches or ranks of an optimizer step. ``impl``: auto, a registered
    name (reference, chunked, triton) or an LM-term function; ``lm_options`` go to it
    (the fused ones' ``chunk_size``, ``memory_budget``). Where nothing is supervised the
    term is a zero connected to every input (ZeRO-3: every rank runs the same backward)."""
    lm_term = impl if callable(impl) else LM_TERMS[resolve_impl(impl, hidden.device)]
    labelled = cls_labels != ignore_index
    if n_cls is None:
        n_cls = int(labelled.sum())
    if beta and bool(labelled.any()):
        cls = F.cross_entropy(upcast(cls_logits), cls_labels, ignore_index=ignore_index, reduction="sum") / n_cls
    else:
        cls = zero_like_graph(cls_logits)

    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = lm_targets.reshape(-1)
    rows = (flat_t != ignore_index).nonzero().squeeze(-1)
    if n_lm_tokens is None:
        n_lm_tokens = rows.numel()
    if alpha and rows.numel():
        opts = CEOptions(logit_softcap=logit_softcap or None, label_smoothing=float(label_smoothing),
                         z_loss=float(z_loss))
        lm = lm_term(flat_h, lm_weight, lm_bias, rows, flat_t.index_select(0, rows), n_lm_tokens, opts,
                     **lm_options)
    elif alpha:
        lm = zero_like_graph(flat_h, lm_weight, lm_bias)
    else:
        lm = torch.zeros((), device=hidden.device)
    total = beta * cls + alpha * lm
    return LossOutput(total=total, cls=cls.detach(), lm=lm.detach())


# the whole loss with one implementation's LM term (tests, benchmarks)
IMPLEMENTATIONS: dict[str, Callable[..., LossOutput]] = {name: partial(dual_head_loss, impl=name) for name in LM_TERMS}
reference_dual_head_loss = IMPLEMENTATIONS["reference"]
chunked_dual_head_loss = IMPLEMENTATIONS["chunked"]
