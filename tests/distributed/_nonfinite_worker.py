"""Worker for test_engine's NaN-skip test: ``deepspeed --num_gpus 2 _nonfinite_worker.py
STAGES OUT_DIR`` (e.g. ``0,2,3``: each in turn, in one launch). A tiny Llama DualHeadLoss
under ZeRO-STAGE (0: no ZeRO, fp32: the plain
torch AdamW behind ``step.StepSkipper``), 2 micro-batches per rank
per step, driven by ``dhrd.engine.optimizer_step`` (the train loop's step). A fault makes
one rank's loss NaN in chosen micro-batches:

  step 0  clean
  step 1  rank 1, micro-batch 0 NaN     (one rank only, the step's FIRST micro-batch)
  step 2  clean
  step 3  rank 0, micro-batch 1 NaN     (the LAST micro-batch: earlier grads accumulated)
  step 4  rank 1, micro-batch 1 NaN     (second in a row: the guard with patience 2 stops)

Around every step each rank records the full fp32 parameters, its shard of the master
weights and AdamW state, the lr and DeepSpeed's skipped-step count; OUT_DIR/rank{r}.json
holds whether each step changed them (OUT_DIR/stage{s}-rank{r}.json).
"""

from __future__ import annotations

import json
import os
import random
import sys

import torch

FAULTS = {1: (1, 0), 3: (0, 1), 4: (1, 1)}  # step -> (rank, micro-batch)


class FaultyLoss:
    """Mixin over DualHeadLoss: the total of forward call number ``fault_at`` (counted
    from 0 in ``calls``) is NaN."""

    fault_at, calls = None, 0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        self.calls += 1
        if self.calls - 1 == self.fault_at:
            return (out[0] * float("nan"), *out[1:])
        return out


def micro_batch(step: int, rank: int, j: int):
    from dhrd.data.packing import collate_packed

    rng = random.Random(1000 * step + 10 * rank + j)
    row = []
    for _ in range(2):
        n = rng.randint(8, 14)
        cls_pos = n // 2
        row.append({"input_ids": [rng.randrange(3, 200) for _ in range(n)],
                    "lm_mask": [0] * (cls_pos + 1) + [1] * (n - cls_pos - 1),
                    "cls_pos": cls_pos, "label": rng.randrange(2)})
    return collate_packed([row], pad_id=0)


def snapshot(engine) -> dict:
    """The full fp32 weights (gathered: collective, all ranks in the same order), and this
    rank's flat fp32 master partitions with their AdamW state (moments and step count),
    as the ZeRO optimizer hands them to torch's AdamW."""
    from deepspeed.utils import safe_get_full_fp32_param

    full = (safe_get_full_fp32_param if engine.zero_optimization() else lambda p: p.detach())
    out = {name: full(p).clone() for name, p in engine.module.named_parameters()}
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps it; stage 0 fp32 does not
    for i, group in enumerate(inner.param_groups):
        for j, p in enumerate(group["params"]):
            out[f"master{i}.{j}"] = p.detach().clone()
            for k, v in inner.state.get(p, {}).items():
                out[f"master{i}.{j}:{k}"] = v.clone() if torch.is_tensor(v) else torch.tensor(v)
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    """Every stage of STAGES (comma-separated) in turn, in one process group: one launch."""
    stages, out_dir = (a for a in sys.argv[1:] if not a.startswith("--local_rank"))
    from dhrd.engine.dist import init_distributed

    dist = init_distributed()
    for stage in stages.split(","):
        result = run_stage(int(stage), dist)
        with open(os.path.join(out_dir, f"stage{stage}-rank{dist.rank}.json"), "w") as f:
            json.dump(result, f, indent=1)


def run_stage(stage: int, dist) -> dict:
    import deepspeed

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config, start_warmup_schedule
    from dhrd.engine.step import NonFiniteGuard, TrainingDiverged, optimizer_step, param_groups
    from dhrd.loss import DualHeadLoss
    from dhrd.model.dual_head import DualHeadModel
    from tests.helpers import tiny_backbone

    cfg = load_ds_config(None)
    cfg["zero_optimization"] = {"stage": stage, "stage3_param_persistence_threshold": 0}
    cfg = fill_ds_config(cfg, micro_rows=1, gas=2, world=dist.world, lr=1e-2, weight_decay=0.1, warmup_steps=1,
                         total_steps=8, max_grad_norm=1.0, device=dist.device, hidden_size=32)
    torch.manual_seed(0)
    wrapper = type("Faulty", (FaultyLoss, DualHeadLoss), {})(DualHeadModel(tiny_backbone(), 2), beta=1.0)
    engine, *_ = deepspeed.initialize(model=wrapper, model_parameters=param_groups(wrapper, 0.1), config=cfg)
    start_warmup_schedule(cfg, engine.lr_scheduler)
    guard = NonFiniteGuard(patience=2)
    steps, stopped = [], None
    for step in range(5):
        batches = [micro_batch(step, dist.rank, j) for j in range(2)]
        counts = torch.tensor([sum(b.n_lm_tokens for b in batches), sum(len(b.cls_labels) for b in batches)],
                              dtype=torch.float64)
        n_lm, n_cls = dist.all_reduce(counts).tolist()
        before, lr_before, skipped_before = snapshot(engine), engine.get_lr()[0], engine.skipped_steps
        fault_rank, fault_mb = FAULTS.get(step, (None, None))
        wrapper.calls, wrapper.fault_at = 0, fault_mb if dist.rank == fault_rank else None
        losses = optimizer_step(engine, batches, dist, n_lm, n_cls, alpha=1.0)
        after = snapshot(engine)
        steps.append({"step": step, "losses": losses, "unchanged": same(before, after),
                      "lr_before": lr_before, "lr_after": engine.get_lr()[0],
                      "skipped": engine.skipped_steps - skipped_before, "applied": engine.was_step_applied()})
        try:
            guard.update(losses is not None, step + 1)
        except TrainingDiverged as e:
            stopped = str(e)
            break
    engine.destroy()
    return {"rank": dist.rank, "world": dist.world, "stage": stage, "steps": steps, "stopped": stopped,
            "guard_total": guard.total}


if __name__ == "__main__":
    from dhrd.engine.dist import exit_process, shutdown_distributed

    try:
        main()
    except BaseException:
        shutdown_distributed()
        raise
    exit_process(0, shutdown_distributed(synchronize=True))
