"""The LM term, unfused and obviously correct: the oracle the fused implementations are
tested against. Only the supervised rows are projected onto the vocabulary, but their
logits are materialised in full and autograd keeps them."""

from __future__ import annotations

import torch

from .token_ce import CEOptions, token_cross_entropy


def reference_lm_term(flat_h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      rows: torch.Tensor, targets: torch.Tensor, n, opts: CEOptions) -> torch.Tensor:
    """sum_t CE(h_t W^T + b, y_t) / n over the ``rows`` of ``flat_h`` [N, H]."""
    logits = flat_h.index_select(0, rows) @ weight.t()
    if bias is not None:
        logits = logits + bias
    per_token = token_cross_entropy(logits, targets, logit_softcap=opts.logit_softcap,
                                    label_smoothing=opts.label_smoothing, z_loss=opts.z_loss)
    return per_token.sum() / n
