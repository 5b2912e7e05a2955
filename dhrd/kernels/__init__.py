"""The dual-head loss behind one entry point, ``dual_head_loss``; implementations are
chosen by name (``reference`` today; the fused ones register here)."""

from __future__ import annotations

from typing import Callable

from .reference import LossOutput, count_labelled, count_supervised, reference_dual_head_loss

IMPLEMENTATIONS: dict[str, Callable[..., LossOutput]] = {"reference": reference_dual_head_loss}


def resolve_impl(impl: str, device) -> str:
    """``auto`` picks the best implementation available for the device."""
    if impl != "auto":
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown loss implementation {impl!r}; "
                             f"available: auto, {', '.join(sorted(IMPLEMENTATIONS))}")
        return impl
    dev = getattr(device, "type", str(device))
    for name in (("triton", "chunked") if dev == "cuda" else ("chunked",)):
        if name in IMPLEMENTATIONS:
            return name
    return "reference"


def dual_head_loss(hidden, lm_weight, lm_targets, cls_logits, cls_labels, *, alpha=1.0,
                   beta=1.0, n_lm_tokens=None, n_cls=None, impl: str = "auto",
                   **options) -> LossOutput:
    """``beta * CE(cls) + alpha * LM-CE`` with counts normalised from outside; see
    ``reference_dual_head_loss`` for the arguments. ``impl``: auto, reference, or a
    registered fused implementation."""
    fn = IMPLEMENTATIONS[resolve_impl(impl, hidden.device)]
    return fn(hidden, lm_weight, lm_targets, cls_logits, cls_labels, alpha=alpha, beta=beta,
              n_lm_tokens=n_lm_tokens, n_cls=n_cls, **options)


__all__ = ["LossOutput", "dual_head_loss", "reference_dual_head_loss", "resolve_impl",
           "count_supervised", "count_labelled", "IMPLEMENTATIONS"]
