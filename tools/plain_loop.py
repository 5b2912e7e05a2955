"""A plain padded PyTorch trainer for the same rows and recipe as the engine: the
reference the engine is held to (tools/parity.py, tests/test_parity.py).

Deliberately independent of the engine: no packing, no DeepSpeed, no fused loss, its own
sequence building ([x, <REASON>, r, <ANS>, y, eos] from the tokenizer, right padding with an
attention mask), HF's own embedding resize for the two new tokens, full-vocabulary logits
with ``F.cross_entropy``, torch AdamW and transformers' linear warmup/decay schedule. It
shares only the task's file reader and rationale reader (so both see the same rows), and
the classifier shape: a 2-layer MLP on the hidden state of the last token of x.

    python tools/plain_loop.py --task esnli --model smollm2 --train_file train.jsonl \
        --rationale_file r.jsonl --eval_file dev.jsonl --method dhrd --out runs/plain-dhrd-s0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PlainArgs:
    task: str
    model: str
    train_file: str
    eval_file: str
    rationale_file: str | None = None
    method: str = "dhrd"  # dhrd (alpha 1) or pooled (alpha 0)
    alpha: float | None = None
    lr: float = 5e-5
    batch_size: int = 8
    epochs: float = 1.0
    warmup_steps: int = 5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_seq_len: int = 256
    seed: int = 0
    eval_batch_size: int = 32
    order: str = "random"  # random: shuffled batches of batch_size; packed: the engine's steps (pack_tokens)
    pack_tokens: int = 256
    out: str | None = None
    threads: int = 0


def build_rows(args: PlainArgs, tokenizer, reason_id: int, ans_id: int, with_reasoning: bool, path: str,
               rationales: dict | None):
    """[x] or [x, <REASON>, r, <ANS>, y, eos] per example, with the index of x's last token
    and the positions whose next token is supervised (all tokens of the sequence)."""
    from dhrd.data.tasks import get_task

    task = get_task(args.task)
    answers = [tokenizer(" " + v, add_special_tokens=False)["input_ids"] for v in task.verbalizers]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows = []
    limit = args.max_seq_len - 32  # the engine's default max_input_len
    for ex in task.read(path):
        x = tokenizer(ex.text)["input_ids"]
        if len(x) > limit:  # keep the first token and the end of x (where the question is)
            x = x[:1] + x[len(x) - limit + 1:]
        ids = list(x)
        if with_reasoning:
            r = rationales.get(ex.id) if rationales else None
            answer = answers[ex.label] + eos
            r_ids = tokenizer(" " + r, add_special_tokens=False)["input_ids"] if r else []
            r_ids = r_ids[:max(0, args.max_seq_len - len(x) - len(answer) - 2)]
            ids += ([reason_id] + r_ids if r_ids else []) + [ans_id] + answer
        rows.append({"ids": ids, "cls_pos": len(x) - 1, "label": ex.label, "lm": with_reasoning})
    return task, rows


def pad_batch(rows, pad_id: int):
    from dhrd.data.padding import pad_ids

    ids, mask = pad_ids([r["ids"] for r in rows], pad_id)
    targets = torch.full(ids.shape, -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        if r["lm"]:
            targets[i, :n - 1] = torch.tensor(r["ids"][1:])  # every token of s predicts the next
    return ids, mask, targets


def step_batches(args: PlainArgs, lengths: list[int]) -> list[list[int]]:
    """The example indices of each optimizer step. ``random``: epochs of shuffled indices,
    ``batch_size`` a step. ``packed``: exactly the engine's steps for the same seed (its
    packing plan, micro-batches per step from ``batch_size``), to measure what the
    packed batch composition alone does."""
    if args.order == "packed":
        from dhrd.config import DataArgs, TrainArgs
        from dhrd.data.order import data_order

        stream, m, total, _ = data_order(
            TrainArgs(seed=args.seed, epochs=args.epochs, global_batch_size=args.batch_size, batching="packed"),
            DataArgs(pack_tokens=args.pack_tokens, max_seq_len=args.pack_tokens), lengths, world=1)
        return [[i for j in range(k * m, (k + 1) * m) for row in stream[j] for i in row] for k in range(total)]
    if args.order != "random":
        raise ValueError(f"order={args.order!r}: random or packed")
    total = max(1, math.ceil(args.epochs * math.ceil(len(lengths) / args.batch_size)))
    rng = random.Random(args.seed)
    order: list[int] = []
    while len(order) < total * args.batch_size:
        perm = list(range(len(lengths)))
        rng.shuffle(perm)
        order += perm
    return [order[k * args.batch_size:(k + 1) * args.batch_size] for k in range(total)]


def train_plain(args: PlainArgs) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from dhrd.data.rationales import read_rationales
    from dhrd.data.report import DataReport
    from dhrd.data.tasks import get_task
    from dhrd.model.backbones import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    alpha = args.alpha if args.alpha is not None else (0.0 if args.method == "pooled" else 1.0)
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                 trust_remote_code=False)
    tok.add_tokens(["<REASON>", "<ANS>"], special_tokens=True)
    model.resize_token_embeddings(len(tok))  # HF's default init of new rows
    reason_id, ans_id = tok.convert_tokens_to_ids(["<REASON>", "<ANS>"])
    H = model.config.hidden_size
    task = get_task(args.task)
    head = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, len(task.labels)))

    rationales = None
    if alpha > 0 and args.rationale_file:
        rationales = {i: r.text for i, r in read_rationales(args.rationale_file, task.labels,
                                                                 DataReport()).items()}
    _, train = build_rows(args, tok, reason_id, ans_id, alpha > 0, args.train_file, rationales)
    _, dev = build_rows(args, tok, reason_id, ans_id, False, args.eval_file, None)

    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    batches = step_batches(args, [len(r["ids"]) for r in train])
    total = len(batches)
    sched = get_linear_schedule_with_warmup(opt, args.warmup_steps, total)
    model.train()
    head.train()
    t0, losses = time.time(), []
    for step in range(total):
        rows = [train[i] for i in batches[step]]
        ids, mask, targets = pad_batch(rows, tok.pad_token_id)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        pooled = hidden[torch.arange(len(rows)), torch.tensor([r["cls_pos"] for r in rows])]
        cls = F.cross_entropy(head(pooled), torch.tensor([r["label"] for r in rows]))
        loss = cls
        lm = torch.zeros(())
        if alpha > 0:
            lm = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1))
            loss = cls + alpha * lm
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append({"step": step + 1, "loss": loss.item(), "cls": cls.item(), "lm": lm.item()})
    train_s = time.time() - t0

    model.eval()
    head.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev), args.eval_batch_size):
            rows = dev[i:i + args.eval_batch_size]
            ids, mask, _ = pad_batch(rows, tok.pad_token_id)
            hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            pooled = hidden[torch.arange(len(rows)), torch.tensor([r["cls_pos"] for r in rows])]
            preds += head(pooled).argmax(-1).tolist()
    labels = [r["label"] for r in dev]
    metrics = task.score(preds, labels)
    result = {"args": asdict(args), "alpha": alpha, "steps": total, "train_s": train_s, "metrics": metrics,
              "predictions": preds, "labels": labels, "losses": losses}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "plain_results.json"), "w") as f:
            json.dump(result, f)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PlainArgs):
        required = f.default is MISSING
        kind = {"float": float, "int": int}.get(str(f.type).split(" ")[0], str)
        p.add_argument(f"--{f.name}", type=kind, required=required, default=None if required else f.default)
    res = train_plain(PlainArgs(**vars(p.parse_args(argv))))
    print(json.dumps({"metrics": res["metrics"], "steps": res["steps"], "train_s": round(res["train_s"], 1)}))
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("plain_loop.py", main))
