"""The LM-term implementations by name, and ``auto``'s choice among them. Each takes
``(flat_h [N, H], weight [V, H], bias | None, rows, targets, n, opts)`` and returns
sum_t CE_t / n over the supervised ``rows``; the fused ones take chunking knobs too."""

from __future__ import annotations

from typing import Callable

import torch

from .chunked import chunked_lm_term
from .reference import reference_lm_term

LM_TERMS: dict[str, Callable[..., torch.Tensor]] = {"reference": reference_lm_term, "chunked": chunked_lm_term}

if torch.cuda.is_available():  # triton ships with CUDA torch; never required to import dhrd
    try:
        from .triton_kernels import triton_lm_term
    except Exception as exc:  # noqa: BLE001 - missing or broken triton: fall back to chunked
        import warnings

        warnings.warn(f"Triton loss kernel unavailable ({exc!r}); using the chunked loss")
    else:
        LM_TERMS["triton"] = triton_lm_term


def resolve_impl(impl: str, device) -> str:
    """``auto`` picks the best implementation available for the device."""
    dev = torch.device(device).type
    if impl != "auto":
        if impl == "triton" and (impl not in LM_TERMS or dev != "cuda"):
            raise ValueError("the 'triton' loss implementation needs CUDA tensors and an "
                             f"importable triton (device: {dev}); use 'auto' or 'chunked'")
        if impl not in LM_TERMS:
            raise ValueError(f"unknown loss implementation {impl!r}; "
                             f"available: auto, {', '.join(sorted(LM_TERMS))}")
        return impl
    for name in (("triton", "chunked") if dev == "cuda" else ("chunked",)):
        if name in LM_TERMS:
            return name
    return "reference"
