"""The dual-head loss: ``dual_head_loss`` (objective.py, the formula) over an LM-term
implementation chosen by name (lm_terms.py: reference, chunked, triton), and
``DualHeadLoss`` (module.py), the model + loss module the DeepSpeed engine wraps."""

from .lm_terms import LM_TERMS, resolve_impl
from .module import DualHeadLoss
from .objective import (
    IMPLEMENTATIONS,
    LossOutput,
    chunked_dual_head_loss,
    count_labelled,
    count_supervised,
    dual_head_loss,
    reference_dual_head_loss,
)
from .token_ce import CEOptions

__all__ = ["CEOptions", "DualHeadLoss", "IMPLEMENTATIONS", "LM_TERMS", "LossOutput", "chunked_dual_head_loss",
           "count_labelled", "count_supervised", "dual_head_loss", "reference_dual_head_loss", "resolve_impl"]
