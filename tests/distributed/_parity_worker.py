"""The engine's optimizer step against a plain PyTorch loop, on the same examples
(run by tests/test_parity.py in its own process: deepspeed.initialize needs a process group).

Engine side: packed micro-batches (several segments a row, several micro-batches a step),
the default DeepSpeed config (ZeRO-2, AdamW, clipping, warmup-cosine schedule) through
``engine.optimizer_step``. Plain side: a deep copy of the same initial model, every example
run ALONE (no packing, plain sdpa), full-vocabulary logits with ``F.cross_entropy``,
``torch.optim.AdamW`` + ``clip_grad_norm_`` at the learning rate the engine used. Prints the
largest relative parameter difference after the steps, as JSON."""

from __future__ import annotations

import copy
import json
import sys

import deepspeed
import torch
import torch.nn.functional as F

from dhrd.data.order import collate
from dhrd.data.packing import collate_packed
from dhrd.engine.dist import init_distributed, shutdown_distributed
from dhrd.engine.ds_config import fill_ds_config, load_ds_config, start_warmup_schedule
from dhrd.engine.step import optimizer_step, param_groups
from dhrd.loss import DualHeadLoss
from dhrd.model.dual_head import DualHeadModel, add_reasoning_tokens
from tests.helpers import make_tiny_tokenizer, tiny_backbone


def main(alpha: float, attn: str, n_steps: int = 5) -> dict:
    dist = init_distributed()
    torch.manual_seed(0)
    tok = make_tiny_tokenizer()
    backbone = tiny_backbone("llama", attn=attn)
    add_reasoning_tokens(tok, backbone)
    model = DualHeadModel(backbone, 3)
    plain = copy.deepcopy(model)
    plain.backbone.config._attn_implementation = "sdpa"
    start = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)

    def segment():
        n = int(torch.randint(10, 40, (1,), generator=g))
        x = int(torch.randint(3, n, (1,), generator=g))  # x = the first x+1 tokens
        supervised = [0] * n if alpha == 0 else [0] + [1] * (n - 1)
        return {"input_ids": torch.randint(2, 300, (n,), generator=g).tolist(), "lm_mask": supervised,
                "cls_pos": x, "label": int(torch.randint(0, 3, (1,), generator=g)), "id": ""}

    # each step: three micro-batches, one of 1 row x 2 segments, one of 2 rows (3 + 2
    # segments) and the empty one that pads an exact-batching step (engine.collate([]))
    steps = [[[[segment(), segment()]], [[segment(), segment(), segment()], [segment(), segment()]], []]
             for _ in range(n_steps)]
    cfg = fill_ds_config(load_ds_config(None), micro_rows=1, gas=3, world=1, lr=1e-3, weight_decay=0.01,
                         warmup_steps=2, total_steps=n_steps, max_grad_norm=1.0, device=dist.device)
    wrapper = DualHeadLoss(model, beta=1.0, impl="chunked")
    engine, *_ = deepspeed.initialize(model=wrapper, model_parameters=param_groups(wrapper, 0.01), config=cfg)
    start_warmup_schedule(cfg, engine.lr_scheduler)
    lrs = []
    for micro in steps:
        batches = [collate_packed(rows, 0) if rows else collate([], {}, 0) for rows in micro]
        lrs.append(engine.get_lr()[0])
        optimizer_step(engine, batches, dist, sum(b.n_lm_tokens for b in batches),
                         sum(b.n_segments for b in batches), alpha)

    opt = torch.optim.AdamW(param_groups(plain, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    params = [p for p in plain.parameters() if p.requires_grad]
    for micro, lr in zip(steps, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        segs = [s for rows in micro for row in rows for s in row]
        n_lm = sum(sum(s["lm_mask"][1:]) for s in segs)
        cls_sum, lm_sum = 0.0, 0.0
        for s in segs:
            ids = torch.tensor([s["input_ids"]])
            hidden = plain.decoder(input_ids=ids, use_cache=False).last_hidden_state[0]
            cls_sum = cls_sum + F.cross_entropy(plain.head(hidden[s["cls_pos"]][None]),
                                                torch.tensor([s["label"]]), reduction="sum")
            if alpha:
                logits = plain.backbone.get_output_embeddings()(hidden[:-1])
                lm_sum = lm_sum + F.cross_entropy(logits, ids[0, 1:], reduction="sum")
        loss = cls_sum / len(segs) + (alpha * lm_sum / n_lm if alpha else 0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    trained = [(a.detach(), b.detach(), s.detach()) for a, b, s in
               zip(model.parameters(), plain.parameters(), start.parameters())]
    # the engine's distance from the plain loop, against how far the plain loop moved
    diff = max((a - b).abs().max().item() for a, b, _ in trained)
    update = max((b - s).abs().max().item() for _, b, s in trained)
    result = {"alpha": alpha, "attn": attn, "lrs": lrs, "max_abs_diff": diff, "max_abs_update": update,
              "diff_over_update": diff / update, "max_rel_diff": max(rel(a, b) for a, b, _ in trained)}
    engine.destroy()
    return result


if __name__ == "__main__":
    from dhrd.engine.dist import exit_process

    print("RESULT " + json.dumps(main(float(sys.argv[1]), sys.argv[2])))
    exit_process(0, shutdown_distributed(synchronize=True))
