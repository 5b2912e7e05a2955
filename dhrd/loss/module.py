"""``DualHeadLoss``: the module DeepSpeed wraps, the model's forward followed by the
dual-head objective, so ZeRO-3's hooks gather every weight the loss touches (the LM-head
weight is registered as an external parameter: tied embeddings included)."""

from __future__ import annotations

import torch
from torch import nn

from .objective import dual_head_loss


class DualHeadLoss(nn.Module):
    """``forward(batch..., alpha=)`` -> (total, cls, lm) for one micro-batch; ``alpha``
    is this step's (the trainer's --alpha_schedule). Without targets it returns the
    model's output (evaluation): the call still enters through the wrapped root module,
    where ZeRO-3 starts each forward's parameter trace."""

    def __init__(self, model: nn.Module, *, beta: float, impl: str = "auto", label_smoothing: float = 0.0,
                 z_loss: float = 0.0):
        super().__init__()
        self.model = model
        self.beta, self.impl, self.label_smoothing, self.z_loss = beta, impl, label_smoothing, z_loss
        for p in (model.lm_weight, model.lm_bias):
            if p is not None and hasattr(p, "ds_id"):
                import deepspeed

                deepspeed.zero.register_external_parameter(self, p)

    def forward(self, input_ids, position_ids, cls_index, cls_start, lm_targets=None, cls_labels=None, *,
                alpha: float = 1.0, n_lm_tokens=None, n_cls=None, choice_index=None):
        out = self.model(input_ids, position_ids, cls_index, cls_start, choice_index=choice_index)
        if lm_targets is None and cls_labels is None:
            return out
        hidden, lm_weight = out.hidden, self.model.lm_weight
        dev = hidden.device.type
        if torch.is_autocast_enabled(dev):
            # the LM head is a matmul like any Linear under autocast; the fused loss runs it
            # by hand (torch.mm with out=, which autocast leaves alone), so cast here
            dt = torch.get_autocast_dtype(dev)
            hidden, lm_weight = hidden.to(dt), lm_weight.to(dt)
        loss = dual_head_loss(hidden, lm_weight, lm_targets, out.cls_logits, cls_labels, alpha=alpha,
                              beta=self.beta, n_lm_tokens=n_lm_tokens, n_cls=n_cls, impl=self.impl,
                              logit_softcap=self.model.logit_softcap, lm_bias=self.model.lm_bias,
                              label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        return loss.total, loss.cls, loss.lm
