"""Two-process DeepSpeed ZeRO-3 check of the dual-head loss implementations, launched by
test_loss_zero3.py as ``deepspeed --num_gpus 2 _zero3_loss_worker.py OUT_DIR`` (CPU
accelerator, fp32). Rank 1 has ZERO supervised LM tokens; rank 0 has several chunks'
worth. Each rank writes OUT_DIR/rank{r}.json for the test to assert on.

How the loss sees the (tied, partitioned) LM weight. Under ZeRO-3 every rank holds a
shard of each parameter; a module's forward pre-hook all-gathers that module's own
parameters and its post-hook frees them again, and its backward hooks do the same for
the backward. The LM weight here is the embedding's weight (tied), whose forward is over
before the loss runs. So the loss is computed inside the forward of the module that
DeepSpeed wraps, with the weight registered as an *external parameter* of that module
(``deepspeed.zero.register_external_parameter``), exactly as ``dhrd.loss.DualHeadLoss``
does: the weight is then gathered for that module's forward and again for its backward
(the reference loss's matmul backward reads W). ``deepspeed.zero.GatheredParameters``
around the loss call would be the wrong tool: it re-partitions the weight when the
``with`` block exits, i.e. before backward, so a backward that needs W's data (the
reference's) finds an empty tensor; only the fused loss, whose backward just scales
gradients computed in the forward, would survive it, and only by accident.

Every rank runs the same backward: with nothing to supervise the fused loss still
returns a 0 connected to hidden and the weight (``zero_like_graph``), so every
parameter's gradient hook fires on both ranks and ZeRO-3's reduce-scatter cannot hang.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn as nn

from dhrd.loss import dual_head_loss

VOCAB, HIDDEN, CLASSES, SEQ = 1000, 32, 3, 40
IMPL_OPTIONS = {"reference": {}, "chunked": {"chunk_size": 7}}  # 7: several uneven chunks


class TinyDualHead(nn.Module):
    """Embedding (tied to the LM head) -> one mixing layer -> hidden; a linear classifier
    on the pooled token; the dual-head loss computed in this module's forward."""

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.mix = nn.Linear(HIDDEN, HIDDEN)
        self.cls = nn.Linear(HIDDEN, CLASSES)

    def forward(self, ids, lm_targets, cls_index, cls_labels, n_lm, n_cls):
        hidden = torch.tanh(self.mix(self.embed(ids)))                 # [B, T, H]
        cls_logits = self.cls(hidden.reshape(-1, HIDDEN).index_select(0, cls_index))
        return dual_head_loss(hidden, self.embed.weight, lm_targets, cls_logits, cls_labels,
                              n_lm_tokens=n_lm, n_cls=n_cls, impl=self.impl,
                              **IMPL_OPTIONS[self.impl]).total


def rank_batch(rank: int):
    """Rank 0: half the tokens supervised; rank 1: none (only its class labels count)."""
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    targets = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    if rank == 0:
        targets[:, : SEQ // 2] = -100
    else:
        targets[:] = -100
    cls_index = torch.tensor([SEQ // 2 - 1, SEQ + SEQ // 2 - 1])
    cls_labels = torch.randint(0, CLASSES, (2,), generator=g)
    return ids, targets, cls_index, cls_labels


def global_counts(world: int) -> tuple[int, int]:
    batches = [rank_batch(r) for r in range(world)]
    return (sum(int((b[1] != -100).sum()) for b in batches),
            sum(int((b[3] != -100).sum()) for b in batches))


def expected_grads(world: int) -> dict[str, torch.Tensor]:
    """No DeepSpeed: the reference loss on every rank's batch, gradients summed, then
    averaged over ranks as ZeRO's reduce-scatter does."""
    torch.manual_seed(0)
    model = TinyDualHead("reference")
    n_lm, n_cls = global_counts(world)
    for r in range(world):
        model(*rank_batch(r), n_lm, n_cls).backward()
    return {n: p.grad / world for n, p in model.named_parameters()}


def run(impl: str, rank: int, world: int) -> dict:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    torch.manual_seed(0)                         # same initial weights on every rank and run
    model = TinyDualHead(impl)
    deepspeed.zero.register_external_parameter(model, model.embed.weight)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                    "overlap_comm": False},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    assert all(p.ds_tensor.numel() < p.ds_numel for p in model.parameters()), "not partitioned"
    n_lm, n_cls = global_counts(world)
    loss = engine(*rank_batch(rank), n_lm, n_cls)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p) for n, p in model.named_parameters()}
    expected = expected_grads(world)
    out = {"loss": float(loss), "grads_none": [n for n, g in grads.items() if g is None],
           "max_abs_diff": {}, "grad_norm": {}}
    for n, g in grads.items():
        if g is not None:
            out["max_abs_diff"][n] = float((g.float().cpu() - expected[n]).abs().max())
            out["grad_norm"][n] = float(g.norm())
    engine.destroy()
    return out


def main() -> None:
    out_dir = next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))
    import deepspeed

    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    result = {"rank": rank, "world": world,
              "n_lm_local": int((rank_batch(rank)[1] != -100).sum()),
              "impls": {impl: run(impl, rank, world) for impl in IMPL_OPTIONS}}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    from dhrd.engine.dist import exit_process, shutdown_distributed

    try:
        main()
    except BaseException:
        shutdown_distributed()
        raise
    exit_process(0, shutdown_distributed(synchronize=True))
