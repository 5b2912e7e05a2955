"""One optimizer step: the parameter groups, and the step itself with its non-finite
guard (the module DeepSpeed wraps, model forward + dual-head loss, is ``loss.DualHeadLoss``).

Before the step's forward passes the ranks all-reduce the supervised-token and
labelled-example counts of all the step's micro-batches; each micro-batch's loss is its
SUM divided by those global counts, so the step's true loss is the sum over ranks and
micro-batches. DeepSpeed averages gradients over ranks (x 1/world) and, with
``scale_wrt_gas``, divides the loss by gas; we call ``backward(loss * world,
scale_wrt_gas=False)`` so the reduced gradient is exactly the sum-normalised one. The
loss runs inside the wrapped module, and the LM-head weight is registered as an external
parameter of it: under ZeRO-3 it is gathered for the loss (tied embeddings included), and
every rank runs the same modules in the same order even with nothing to supervise."""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from ..data.order import batch_inputs
from .dist import Dist


class TrainingDiverged(RuntimeError):
    pass


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; no weight decay on biases and norms (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)
            (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class NonFiniteGuard:
    """Counts non-finite steps; raises after ``patience`` in a row."""

    def __init__(self, patience: int):
        self.patience, self.total, self.in_row = patience, 0, 0

    def state_dict(self) -> dict:
        """The counters a checkpoint records (their keys in the checkpoint's client state)."""
        return {"nonfinite_steps": self.total, "nonfinite_in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        """Counters from a checkpoint's client state (absent keys, as in a fresh run: 0)."""
        self.total, self.in_row = state.get("nonfinite_steps", 0), state.get("nonfinite_in_row", 0)

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.in_row = 0
            return
        self.total += 1
        self.in_row += 1
        if self.in_row >= self.patience:
            raise TrainingDiverged(
                f"loss was NaN/inf in {self.in_row} consecutive steps (last: step {step}; "
                f"{self.total} in all): stopping. Lower --lr, check the data, or raise --nan_patience.")


class StepSkipper:
    """The overflow check for ZeRO stage 0 in fp32, where DeepSpeed hands the gradients to
    the plain optimizer and has none: at the accumulation boundary, before DeepSpeed's
    clipping, it takes the global gradient norm and tells the optimizer, through the
    attributes DeepSpeed's own bf16/ZeRO optimizers expose (``overflow``,
    ``_global_grad_norm``), whether to skip the update. DeepSpeed then counts the skip,
    leaves the LR schedule where it is and clears the gradients, as with those optimizers.
    ``of`` returns None where the engine's optimizer already has the check."""

    def __init__(self, engine):
        self.opt = engine.optimizer
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.opt.overflow, self.opt._global_grad_norm = False, None
        step = self.opt.step

        def guarded_step(*args, **kwargs):
            return None if self.opt.overflow else step(*args, **kwargs)

        self.opt.step = guarded_step

    @classmethod
    def of(cls, engine) -> "StepSkipper | None":
        """The engine's skipper, made on first use; None where it is not needed."""
        if engine not in _SKIPPERS:
            plain = not engine.zero_optimization() and not engine.bfloat16_enabled() and not engine.fp16_enabled()
            _SKIPPERS[engine] = cls(engine) if plain else None
        return _SKIPPERS[engine]

    def before_update(self, finite: bool) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        bad = not finite or not math.isfinite(norm)
        self.opt.overflow = bad
        self.opt._global_grad_norm = float("inf") if bad else norm


_SKIPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def optimizer_step(engine, batches: list, dist: Dist, n_lm: float, n_cls: float, alpha: float) -> list[float] | None:
    """This rank's micro-batches of one optimizer step: forward, backward, engine.step()
    each (``n_lm``/``n_cls``: the step's global counts; ``alpha``: the step's LM weight). Returns the step's global
    (total, cls, lm) loss, or None when a loss was NaN/inf on any rank: then the step is
    skipped for real. The ranks agree on that after each forward, and from then on every
    rank backpropagates a NaN loss, so the accumulated gradients are NaN everywhere and
    DeepSpeed's own overflow check (ZeRO-1/2/3 and bf16 optimizers: an invalid global
    grad norm) drops the update at the boundary: no optimizer or scheduler step, the
    gradients cleared, ``engine.skipped_steps`` + 1. Every rank still runs the same
    forwards, backwards and steps, so ZeRO-3's collectives stay in step."""
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)
    finite, skipper = True, StepSkipper.of(engine)
    # one process without ZeRO: an empty micro-batch (exact batching's padding) has nothing
    # to add to the gradients, so only DeepSpeed's micro-step count moves (elsewhere every
    # rank runs the same forwards and backwards, for ZeRO's and the all-reduce's collectives)
    skip_empty = dist.world == 1 and not engine.zero_optimization()
    for b in batches:
        if not (skip_empty and b.n_segments == 0):
            total, cls, lm = engine(**batch_inputs(b, dist.device), alpha=alpha,
                                    n_lm_tokens=max(n_lm, 1.0), n_cls=max(n_cls, 1.0))
            bad = dist.all_reduce(torch.tensor([0.0 if torch.isfinite(total) else 1.0], device=dist.device),
                                  torch.distributed.ReduceOp.MAX)
            finite = finite and not bad.item()
            if finite:
                sums += torch.stack([total.detach(), cls, lm]).double()
            else:
                total = total * float("nan")
            engine.backward(total * dist.world, scale_wrt_gas=False)
        if skipper is not None and engine.is_gradient_accumulation_boundary():
            skipper.before_update(finite)
        engine.step()
    if not finite and engine.was_step_applied():  # fill_ds_config rejects such configs up front
        raise TrainingDiverged("DeepSpeed applied an update with NaN gradients: this configuration has no "
                               "overflow check")
    return dist.all_reduce(sums).tolist() if finite else None
