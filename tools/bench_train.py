"""Training-step throughput and peak memory: this engine's core vs two plain baselines.

    python tools/bench_train.py                       # synthetic RTE-length data, SmolLM2-135M, CPU
    python tools/bench_train.py --task rte --train_file RTE/train.jsonl --rationale_file r.jsonl
    python tools/bench_train.py --model DIR --examples_per_step 16 --steps 2

Methods (same model, same examples per optimizer step, same optimizer: torch AdamW, same
lr / weight decay, grad-norm clipping 1.0, fp32 on CPU; every loss is sum-normalised by the
step's global counts, as the engine does):

* ``ours``   the core of ``dhrd.engine``: the step's examples packed by ``plan_micro_batches``
  (best-fit decreasing into ``--pack_tokens`` rows, ``--rows_per_batch`` rows a micro-batch),
  ``collate_packed`` (restarting position ids, no attention mask), the ``DualHeadLoss``
  module (DualHeadModel forward + ``dual_head_loss`` with impl auto), backward per
  micro-batch, one optimizer step. It is driven WITHOUT ``deepspeed.initialize``: a plain
  torch AdamW replaces DeepSpeed's optimizer/ZeRO wrapper so all three methods share the
  optimizer and the measurement is about the data layout and the loss, not the wrapper.
* ``single`` (a) the obvious single-pass DHRD: the same [x, <REASON>, r, <ANS>, y] sequences
  in micro-batches of ``--batch_size`` examples, dynamically padded (right) to the longest
  in the batch, with an attention mask; the full [B, T, V] logits of the LM head and
  ``F.cross_entropy`` on the supervised tokens; the classifier pools the last real token
  of x (same head).
* ``dss``    (b) Distilling-Step-by-Step: two forward passes per example, each padded with
  a mask: a label pass on [x] -> classifier loss (last token of x, same head), and a
  rationale pass on [x, <REASON>, r, <ANS>, y] -> LM loss (full logits + cross-entropy).

"real tokens/s" counts the non-padding tokens each method runs through the model per
second (for dss both passes, so x is counted twice); examples/s is the comparable figure.

Each method runs in its own fresh subprocess (peak RSS = VmHWM of that process, model load
included). The processes are started together but driven in lock step by this parent:
one optimizer step at a time, round-robin over the methods with the order rotated each
round, so machine contention (a shared, noisy CPU) falls on all methods alike. Step 0 is a
warm-up (``--warmup_examples`` examples: first calls, AdamW state allocation) and is not
timed. Besides wall time each step records the worker's CPU time (``process_time``, all
threads): on a contended machine examples per CPU-second is the steadier comparison.
Per-phase times (forward+loss, backward, optimizer) show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ("ours", "single", "dss")
TAG = "@@BENCH "
WORDS = ("the a company report said that its new plan would increase sales in several markets "
         "while government officials claimed people were not aware of changes to the law after "
         "years of talks between two countries about trade and security in the region").split()


# ---------------------------------------------------------------------------------------
# data (parent)

def synthetic_rte(n: int, seed: int, premise_words: int, hypothesis_words: int,
                  rationale_words: int, workdir: str) -> tuple[str, str]:
    """RTE-like rows (SuperGLUE jsonl) and a rationale file; word counts lognormal around
    the given means (RTE train: premise ~43, hypothesis ~9 words)."""
    rng = random.Random(seed)

    def words(mean):
        k = max(3, int(round(rng.lognormvariate(0, 0.45) * mean)))
        return " ".join(rng.choice(WORDS) for _ in range(k))

    train, rats = os.path.join(workdir, "train.jsonl"), os.path.join(workdir, "rationales.jsonl")
    with open(train, "w") as f, open(rats, "w") as g:
        for i in range(n):
            label = rng.choice(["entailment", "not_entailment"])
            f.write(json.dumps({"idx": i, "premise": words(premise_words).capitalize() + ".",
                                "hypothesis": words(hypothesis_words).capitalize() + ".",
                                "label": label}) + "\n")
            g.write(json.dumps({"id": str(i), "rationale": words(rationale_words) + ".",
                                "teacher_label": label}) + "\n")
    return train, rats


def build_rows(a, workdir: str) -> list[dict]:
    from dhrd.config import DataArgs
    from dhrd.data.pipeline import build_training_set
    from dhrd.data.tasks import get_task
    from dhrd.model.backbones import load_backbone, load_tokenizer, resolve_model_path
    from dhrd.model.dual_head import add_reasoning_tokens

    n_needed = a.examples_per_step * (a.steps + 1)
    if a.train_file:
        train, rats = a.train_file, a.rationale_file
    else:
        train, rats = synthetic_rte(n_needed, a.seed, a.premise_words, a.hypothesis_words,
                                    a.rationale_words, workdir)
    task = get_task(a.task)
    examples = task.read(train)
    path = resolve_model_path(a.model)
    tok = load_tokenizer(path)
    backbone = load_backbone(path)  # only to give the reasoning tokens the engine's ids
    special = add_reasoning_tokens(tok, backbone)
    del backbone
    data_args = DataArgs(task=a.task, train_file=train, rationale_file=rats, max_seq_len=a.max_seq_len,
                         pack_tokens=max(a.pack_tokens, a.max_seq_len), lm_sections=a.lm_sections)
    ds, _ = build_training_set(task, examples, tok, special, data_args, seed=a.seed)
    rows = [{k: ds[k][i] for k in ("input_ids", "lm_mask", "cls_pos", "label", "id", "length")}
            for i in range(len(ds))]
    random.Random(a.seed).shuffle(rows)
    if len(rows) < n_needed:  # a small real file: cycle through it
        rows = [rows[i % len(rows)] for i in range(n_needed)]
    return rows[:n_needed], tok.pad_token_id


# ---------------------------------------------------------------------------------------
# batches (worker)

def padded(seqs: list[list[int]], pad_id: int):
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def lm_targets_of(rows, T: int):
    import torch

    tgt = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids, m = torch.as_tensor(r["input_ids"]), torch.as_tensor(r["lm_mask"], dtype=torch.bool)
        tgt[i, :len(ids) - 1] = torch.where(m[1:], ids[1:], torch.full_like(ids[1:], -100))
    return tgt


def step_batches(method: str, rows: list[dict], a, pad_id: int):
    """The step's micro-batches (built before timing starts, for every method alike)."""
    import torch

    from dhrd.data.packing import collate_packed, plan_micro_batches

    if method == "ours":
        plan = plan_micro_batches([r["length"] for r in rows], a.pack_tokens, a.rows_per_batch, seed=a.seed)
        return [collate_packed([[rows[i] for i in row] for row in mb], pad_id) for mb in plan]
    out = []
    for s in range(0, len(rows), a.batch_size):
        chunk = rows[s:s + a.batch_size]
        if method == "single":
            ids, mask = padded([r["input_ids"] for r in chunk], pad_id)
            out.append({"ids": ids, "mask": mask, "tgt": lm_targets_of(chunk, ids.shape[1]),
                        "cls_pos": torch.tensor([r["cls_pos"] for r in chunk]),
                        "labels": torch.tensor([r["label"] for r in chunk])})
        else:  # dss: label pass on x, rationale pass on the full sequence
            xids, xmask = padded([r["input_ids"][:r["cls_pos"] + 1] for r in chunk], pad_id)
            ids, mask = padded([r["input_ids"] for r in chunk], pad_id)
            out.append({"xids": xids, "xmask": xmask, "cls_pos": torch.tensor([r["cls_pos"] for r in chunk]),
                        "labels": torch.tensor([r["label"] for r in chunk]),
                        "ids": ids, "mask": mask, "tgt": lm_targets_of(chunk, ids.shape[1])})
    return out


def count_tokens(method: str, batches) -> tuple[int, int, int]:
    """(real tokens run through the model, padded tokens run, supervised LM tokens)."""
    if method == "ours":
        return (sum(b.n_real_tokens for b in batches), sum(b.budget for b in batches),
                sum(b.n_lm_tokens for b in batches))
    real = sum(int(b["mask"].sum()) + (int(b["xmask"].sum()) if "xmask" in b else 0) for b in batches)
    run = sum(b["ids"].numel() + (b["xids"].numel() if "xids" in b else 0) for b in batches)
    return real, run, sum(int((b["tgt"] != -100).sum()) for b in batches)


def vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(a) -> int:
    import torch
    import torch.nn.functional as F

    from dhrd.config import LossArgs, ModelArgs
    from dhrd.engine.step import DualHeadLoss, param_groups
    from dhrd.model.builder import build_dual_head_model

    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.data) as f:
        data = json.load(f)
    rows, pad_id, method = data["rows"], data["pad_id"], a.worker
    model, _, _ = build_dual_head_model(ModelArgs(model=a.model), num_labels=2)
    model.train()
    wrapper = DualHeadLoss(model, LossArgs(loss_impl="auto"))
    opt = torch.optim.AdamW(param_groups(wrapper, 0.01), lr=a.lr)
    E = a.examples_per_step
    W = a.warmup_examples or E  # step 0 (the untimed warm-up) may use fewer examples
    steps = [step_batches(method, rows[:W], a, pad_id)] + \
        [step_batches(method, rows[s * E:(s + 1) * E], a, pad_id) for s in range(1, a.steps + 1)]

    def one_step(batches) -> dict:
        ph = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}
        n_cls = float(sum(len(b.cls_labels) if method == "ours" else len(b["labels"]) for b in batches))
        n_lm = float(max(count_tokens(method, batches)[2], 1))
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            t = time.perf_counter()
            if method == "ours":
                total, _, _ = wrapper(b.input_ids, b.position_ids, b.cls_index, b.cls_start,
                                      lm_targets=b.lm_targets, cls_labels=b.cls_labels,
                                      n_lm_tokens=n_lm, n_cls=n_cls)
            else:
                if method == "single":
                    ids, mask = b["ids"], b["mask"]
                    hidden = model.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                    cls_hidden = hidden
                else:
                    cls_hidden = model.decoder(input_ids=b["xids"], attention_mask=b["xmask"],
                                               use_cache=False).last_hidden_state
                    hidden = model.decoder(input_ids=b["ids"], attention_mask=b["mask"],
                                           use_cache=False).last_hidden_state
                pooled = cls_hidden[torch.arange(len(b["cls_pos"])), b["cls_pos"]]
                cls_loss = F.cross_entropy(model.head(pooled), b["labels"], reduction="sum") / n_cls
                logits = model.lm_head(hidden)  # the full [B, T, V] logits
                lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b["tgt"].reshape(-1),
                                          ignore_index=-100, reduction="sum") / n_lm
                total = cls_loss + lm_loss
            t1 = time.perf_counter()
            total.backward()
            t2 = time.perf_counter()
            ph["fwd"] += t1 - t
            ph["bwd"] += t2 - t1
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in wrapper.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ph["opt"] = time.perf_counter() - t
        ph["dt"] = time.perf_counter() - t0
        ph["cpu"] = time.process_time() - c0
        real, run_tokens, sup = count_tokens(method, batches)
        return {**ph, "real_tokens": real, "run_tokens": run_tokens, "lm_tokens": sup,
                "micro_batches": len(batches), "loss": float(total.detach()), "examples": n_cls}

    from dhrd.kernels import resolve_impl

    print(TAG + json.dumps({"ready": True, "loss_impl": resolve_impl("auto", torch.device("cpu")),
                            "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "step":
            res = one_step(steps[int(cmd[1])])
            print(TAG + json.dumps(res), flush=True)
        elif cmd[0] == "quit":
            print(TAG + json.dumps({"vmhwm_mb": vmhwm_mb()}), flush=True)
            return 0
    return 0


# ---------------------------------------------------------------------------------------
# driver (parent)

class Proc:
    def __init__(self, method: str, argv: list[str], log_dir: str):
        self.method = method
        self.err = open(os.path.join(log_dir, f"{method}.stderr"), "w")
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--worker", method],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def read(self) -> dict:
        for line in self.p.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.died()

    def died(self):
        rc = self.p.wait()
        why = " (SIGKILL: out of memory? try fewer --examples_per_step)" if rc == -9 else ""
        raise SystemExit(f"bench_train: the {self.method} worker exited with code {rc}{why}; see {self.err.name}")

    def ask(self, cmd: str) -> dict:
        try:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            self.died()
        return self.read()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="rte")
    p.add_argument("--train_file", help="real task JSONL (default: synthetic RTE-like rows)")
    p.add_argument("--rationale_file")
    p.add_argument("--premise_words", type=int, default=45)
    p.add_argument("--hypothesis_words", type=int, default=9)
    p.add_argument("--rationale_words", type=int, default=60)
    p.add_argument("--lm_sections", default="all")
    p.add_argument("--max_seq_len", type=int, default=1024)
    p.add_argument("--examples_per_step", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per method (after 1 warm-up)")
    p.add_argument("--batch_size", type=int, default=8, help="examples per padded micro-batch (baselines)")
    p.add_argument("--pack_tokens", type=int, default=1024, help="packed row budget (ours)")
    p.add_argument("--rows_per_batch", type=int, default=1, help="packed rows per micro-batch (ours)")
    p.add_argument("--warmup_examples", type=int, default=4,
                   help="examples in the untimed warm-up step (0: a full step)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json_out", help="write the raw per-step results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    if a.train_file and not a.rationale_file:
        p.error("--train_file needs --rationale_file")

    workdir = tempfile.mkdtemp(prefix="bench_train_")
    rows, pad_id = build_rows(a, workdir)
    data = os.path.join(workdir, "rows.json")
    with open(data, "w") as f:
        json.dump({"rows": rows, "pad_id": pad_id}, f)
    lens = [r["length"] for r in rows]
    xlens = [r["cls_pos"] + 1 for r in rows]
    print(f"data: {len(rows)} examples, sequence length mean {statistics.mean(lens):.0f} "
          f"(min {min(lens)}, max {max(lens)}), x mean {statistics.mean(xlens):.0f} tokens; "
          f"{a.examples_per_step} examples/step, 1 warm-up + {a.steps} timed steps; work dir {workdir}",
          flush=True)

    methods = a.methods.split(",")
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:])]
    procs = {m: Proc(m, [*passthrough, "--data", data], workdir) for m in methods}
    t_start = time.time()
    try:
        for m in methods:  # all loaded (the loads overlap; nothing is timed yet)
            info = procs[m].read()
        print(f"dual_head_loss impl auto -> {info['loss_impl']}; torch threads per worker {info['threads']}",
              flush=True)
        results: dict[str, list[dict]] = {m: [] for m in methods}
        for s in range(a.steps + 1):
            order = methods[s % len(methods):] + methods[:s % len(methods)]
            for m in order:
                r = procs[m].ask(f"step {s}")
                tag = "warm-up" if s == 0 else "timed"
                print(f"  step {s} {m:<6} {tag}: {r['dt']:.1f}s wall, {r['cpu']:.1f}s cpu "
                      f"(fwd {r['fwd']:.1f} bwd {r['bwd']:.1f} "
                      f"opt {r['opt']:.1f}), {r['micro_batches']} micro-batches, "
                      f"{r['real_tokens']} real / {r['run_tokens']} run tokens", flush=True)
                if s > 0:
                    results[m].append(r)
        rss = {m: procs[m].ask("quit")["vmhwm_mb"] for m in methods}
    finally:
        for pr in procs.values():
            if pr.p.poll() is None:
                pr.p.kill()
            pr.p.wait()
    print(f"(total {time.time() - t_start:.0f}s)\n")

    def rate(m, key):
        rs = results[m]
        return sum(r[key] for r in rs) / sum(r["dt"] for r in rs)

    def cpu_rate(m):
        rs = results[m]
        return sum(r["examples"] for r in rs) / sum(r["cpu"] for r in rs)

    names = {"ours": "ours (packed + DualHeadLoss)", "single": "(a) single-pass, padded, full logits",
             "dss": "(b) DSS two-pass, padded"}
    ref = "ours" if "ours" in methods else methods[0]
    print("| method | examples/s | real tokens/s | run tokens (padded) / step | peak RSS "
          "| ours / method (examples/s) | examples per CPU-s | ours / method (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        ex = rate(m, "examples")
        run_per_step = statistics.mean(r["run_tokens"] for r in results[m])
        print(f"| {names.get(m, m)} | {ex:.2f} | {rate(m, 'real_tokens'):.0f} | {run_per_step:.0f} | "
              f"{rss[m] / 1024:.2f} GiB | {rate(ref, 'examples') / ex:.2f}x | {cpu_rate(m):.3f} | "
              f"{cpu_rate(ref) / cpu_rate(m):.2f}x |")
    print("\ntime split (share of timed step time): " + "; ".join(
        f"{m}: fwd+loss {sum(r['fwd'] for r in results[m]) / sum(r['dt'] for r in results[m]):.0%}, "
        f"bwd {sum(r['bwd'] for r in results[m]) / sum(r['dt'] for r in results[m]):.0%}, "
        f"opt {sum(r['opt'] for r in results[m]) / sum(r['dt'] for r in results[m]):.0%}" for m in methods))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"args": vars(a), "results": results, "peak_rss_mb": rss}, f, indent=2)
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_train.py", main))
