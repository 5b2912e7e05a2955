"""The dual-head loss behind one entry point, ``dual_head_loss``; implementations are
chosen by name (``reference`` today; the fused ones register here)."""

from __future__ import annotations

from typing import Callable

import torch

from .reference import LossOutput, count_labelled, count_supervised, reference_dual_head_loss

IMPLEMENTATIONS: dict[str, Callable[..., LossOutput]] = {"reference": reference_dual_head_loss}

from .chunked import chunked_dual_head_loss  # noqa: E402

IMPLEMENTATIONS["chunked"] = chunked_dual_head_loss
if torch.cuda.is_available():  # triton ships with CUDA torch; never required to import dhrd
    try:
        from .triton_kernels import triton_dual_head_loss
    except Exception as exc:  # noqa: BLE001 - missing or broken triton: fall back to chunked
        import warnings

        warnings.warn(f"Triton loss kernel unavailable ({exc!r}); using the chunked loss")
    else:
        IMPLEMENTATIONS["triton"] = triton_dual_head_loss


def resolve_impl(impl: str, device) -> str:
    """``auto`` picks the best implementation available for the device."""
    dev = torch.device(device).type
    if impl != "auto":
        if impl == "triton" and (impl not in IMPLEMENTATIONS or dev != "cuda"):
            raise ValueError("the 'triton' loss implementation needs CUDA tensors and an "
                             f"importable triton (device: {dev}); use 'auto' or 'chunked'")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown loss implementation {impl!r}; "
                             f"available: auto, {', '.join(sorted(IMPLEMENTATIONS))}")
        return impl
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
