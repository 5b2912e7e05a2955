"""Training throughput and peak memory: the real engine against plain baselines.

    python tools/bench_train.py                                   # synthetic RTE-length rows, DHRD
    python tools/bench_train.py --task esnli --train_file train.jsonl --rationale_file r.jsonl \
        --examples_per_step 8 --pack_tokens 256 --max_seq_len 256           # real short rows
    python tools/bench_train.py ... --method pooled                # pooled: the engine against HF Trainer

Methods (same model, same examples per optimizer step, AdamW with torch's fused CPU kernel
or CUDA's, the same lr / weight decay, clipping at 1.0, fp32 on CPU):

* ``engine``  the real thing: ``dhrd.engine.trainer.Trainer`` built from train.py's
  arguments (its data path, DeepSpeed engine with the default config or ``--ds_config``),
  each step ``Trainer.train_step``: collation, the global counts, DeepSpeed's
  forward/backward/step. Nothing of it is copied here; the phase times come from wrapping
  the DeepSpeed engine's ``forward``/``backward``/``step``.
* ``single``  the obvious single-pass loop: the step's examples in padded micro-batches of
  ``--batch_size`` with an attention mask; DHRD: [x, <REASON>, r, <ANS>, y] with the full
  [B, T, V] logits and ``F.cross_entropy`` on the supervised tokens; pooled: [x] only.
  The same classifier head on the last token of x.
* ``dss``     (DHRD only) Distilling-Step-by-Step: two padded passes per example, [x] for
  the classifier and the full sequence for the LM loss.
* ``hf``      (pooled only) HF ``Trainer`` + ``AutoModelForSequenceClassification`` (its
  linear ``score`` head on the last non-pad token), batch ``--examples_per_step``, its
  default fused AdamW and linear schedule.

Each method runs in its own fresh subprocess (peak RSS = VmHWM of that process, model load
included), driven in lock step by this parent: one optimizer step at a time, round-robin,
the order rotated each round, so a noisy machine slows all alike. Step 0 is a warm-up and
not timed. Besides wall time each step records the worker's CPU time (all threads): on a
contended machine examples per CPU-second is the steadier figure.
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

METHODS = {"dhrd": ("engine", "single", "dss"), "pooled": ("engine", "hf", "single")}
NAMES = {"engine": "engine (dhrd/train.py's Trainer)", "single": "single-pass padded loop",
         "dss": "DSS two-pass padded loop", "hf": "HF Trainer + AutoModelForSequenceClassification"}
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


def build_rows(a, train: str, rats: str) -> tuple[list[dict], int]:
    """The baselines' rows, tokenised by the engine's own data path (so every method sees
    the same sequences), shuffled; a small file is cycled through."""
    from dhrd.config import DataArgs
    from dhrd.data.pipeline import build_training_set
    from dhrd.data.tasks import get_task
    from dhrd.model.backbones import load_backbone, load_tokenizer, resolve_model_path
    from dhrd.model.dual_head import add_reasoning_tokens

    task = get_task(a.task)
    path = resolve_model_path(a.model)
    tok = load_tokenizer(path)
    backbone = load_backbone(path)  # only to give the reasoning tokens the engine's ids
    special = add_reasoning_tokens(tok, backbone)
    del backbone
    data_args = DataArgs(task=a.task, train_file=train, rationale_file=rats, max_seq_len=a.max_seq_len,
                         pack_tokens=max(a.pack_tokens, a.max_seq_len), lm_sections=a.lm_sections)
    ds, _ = build_training_set(task, task.read(train), tok, special, data_args, seed=a.seed,
                               with_reasoning=a.method == "dhrd")
    rows = [{k: ds[k][i] for k in ("input_ids", "lm_mask", "cls_pos", "label", "length")} for i in range(len(ds))]
    random.Random(a.seed).shuffle(rows)
    n_needed = a.examples_per_step * (a.steps + 1)
    return [rows[i % len(rows)] for i in range(n_needed)], tok.pad_token_id


# ---------------------------------------------------------------------------------------
# workers: each prints TAG {"ready"}, then answers "step K" with TAG {timings} and "quit"
# with TAG {"vmhwm_mb"}

def vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve(run_step, info: dict) -> int:
    print(TAG + json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "step":
            print(TAG + json.dumps(run_step(int(cmd[1]))), flush=True)
        elif cmd and cmd[0] == "quit":
            print(TAG + json.dumps({"vmhwm_mb": vmhwm_mb()}), flush=True)
            return 0
    return 0


class Phases:
    """Wall time spent inside wrapped callables, by phase."""

    def __init__(self):
        self.t = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}

    def wrap(self, obj, name: str, phase: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t[phase] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def take(self) -> dict:
        out, self.t = self.t, {k: 0.0 for k in self.t}
        return out


def engine_worker(a, data: dict) -> int:
    """The real Trainer; step k is its optimizer step k."""
    import torch

    from dhrd.config import apply_method, explicit_fields, parse_args
    from dhrd.engine.trainer import Trainer

    if a.threads:
        torch.set_num_threads(a.threads)
    argv = ["--task", a.task, "--model", a.model, "--train_file", data["train"], "--method", a.method,
            "--global_batch_size", str(a.examples_per_step), "--pack_tokens", str(a.pack_tokens),
            "--max_seq_len", str(a.max_seq_len), "--rows_per_batch", str(a.rows_per_batch),
            "--lm_sections", a.lm_sections, "--lr", str(a.lr), "--seed", str(a.seed), "--epochs", "1000",
            "--max_steps", str(a.steps + 1), "--output_dir", os.path.join(data["workdir"], "engine"),
            "--export_final", "false", "--progress", "false", "--log_sequences", "0"]
    if a.ds_config:
        argv += ["--ds_config", a.ds_config]
    if a.autocast != "none":
        argv += ["--autocast", a.autocast]
    if data["rats"]:
        argv += ["--rationale_file", data["rats"]]
    model_args, data_args, loss_args, train_args, _ = parse_args(argv)
    apply_method(loss_args, data_args, explicit_fields(argv), model_args)
    trainer = Trainer(model_args, data_args, loss_args, train_args)
    phases = Phases()
    phases.wrap(trainer.engine, "forward", "fwd")
    phases.wrap(trainer.engine, "backward", "bwd")
    phases.wrap(trainer.engine, "step", "opt")
    lengths = trainer.train_table["length"]

    def run_step(k: int) -> dict:
        plans = [trainer.stream[k * trainer.M + j] for j in range(trainer.M)]
        t0, c0 = time.perf_counter(), time.process_time()
        values, _ = trainer.train_step(k)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        real = sum(lengths[i] for mb in plans for r in mb for i in r)
        return {**phases.take(), "dt": dt, "cpu": cpu, "examples": sum(len(r) for mb in plans for r in mb),
                "real_tokens": real, "micro_batches": len(plans),
                # the step's token slots as collated, padding included: real / (real / slots)
                "run_tokens": round(real / values["perf/packing_efficiency"]),
                "loss": values.get("train/loss_total")}

    return serve(run_step, {"threads": torch.get_num_threads(), "zero_stage": trainer.engine.zero_optimization_stage()})


def lm_targets_of(rows, T: int):
    import torch

    tgt = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids, m = torch.as_tensor(r["input_ids"]), torch.as_tensor(r["lm_mask"], dtype=torch.bool)
        tgt[i, :len(ids) - 1] = torch.where(m[1:], ids[1:], torch.full_like(ids[1:], -100))
    return tgt


def loop_batches(method: str, rows: list[dict], batch_size: int, pad_id: int) -> list[dict]:
    import torch

    from dhrd.data.padding import pad_ids

    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        b = {"cls_pos": torch.tensor([r["cls_pos"] for r in chunk]),
             "labels": torch.tensor([r["label"] for r in chunk])}
        b["ids"], b["mask"] = pad_ids([r["input_ids"] for r in chunk], pad_id)
        b["tgt"] = lm_targets_of(chunk, b["ids"].shape[1])
        if method == "dss":
            b["xids"], b["xmask"] = pad_ids([r["input_ids"][:r["cls_pos"] + 1] for r in chunk], pad_id)
        out.append(b)
    return out


def loop_worker(a, data: dict) -> int:
    """``single`` and ``dss``: a plain padded loop over the DualHeadModel's parts."""
    import torch
    import torch.nn.functional as F

    from dhrd.config import ModelArgs
    from dhrd.data.tasks import get_task
    from dhrd.engine.step import param_groups
    from dhrd.model.builder import build_dual_head_model

    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows, method, E, lm = data["rows"], a.worker, a.examples_per_step, a.method == "dhrd"
    model, _, _ = build_dual_head_model(ModelArgs(model=a.model), num_labels=len(get_task(a.task).labels))
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=a.lr, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def run_step(k: int) -> dict:
        batches = loop_batches(method, rows[k * E:(k + 1) * E], a.batch_size, data["pad_id"])
        ph = {"fwd": 0.0, "bwd": 0.0}
        n_cls = float(sum(len(b["labels"]) for b in batches))
        n_lm = float(max(sum(int((b["tgt"] != -100).sum()) for b in batches), 1))
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            t = time.perf_counter()
            if method == "dss" or not lm:
                cls_hidden = model.decoder(input_ids=b.get("xids", b["ids"]), attention_mask=b.get("xmask", b["mask"]),
                                           use_cache=False).last_hidden_state
            total = 0.0
            if lm:
                hidden = model.decoder(input_ids=b["ids"], attention_mask=b["mask"], use_cache=False).last_hidden_state
                cls_hidden = hidden if method == "single" else cls_hidden
                logits = model.lm_head(hidden)  # the full [B, T, V] logits
                total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b["tgt"].reshape(-1),
                                        ignore_index=-100, reduction="sum") / n_lm
            pooled = cls_hidden[torch.arange(len(b["cls_pos"])), b["cls_pos"]]
            total = total + F.cross_entropy(model.head(pooled), b["labels"], reduction="sum") / n_cls
            t1 = time.perf_counter()
            total.backward()
            ph["fwd"] += t1 - t
            ph["bwd"] += time.perf_counter() - t1
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ph["opt"] = time.perf_counter() - t
        run = sum(b["ids"].numel() + (b["xids"].numel() if "xids" in b else 0) for b in batches)
        return {**ph, "dt": time.perf_counter() - t0, "cpu": time.process_time() - c0, "examples": n_cls,
                "real_tokens": sum(int(b["mask"].sum()) for b in batches), "run_tokens": run,
                "micro_batches": len(batches), "loss": float(total.detach())}

    return serve(run_step, {"threads": torch.get_num_threads()})


def hf_worker(a, data: dict) -> int:
    """HF Trainer on [x] rows (pooled), held at the end of each step until the parent
    asks for the next: the time from the go to the step's end is the step's time."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from dhrd.data.tasks import get_task
    from dhrd.model.backbones import load_tokenizer, resolve_model_path

    if a.threads:
        torch.set_num_threads(a.threads)
    path = resolve_model_path(a.model)
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(get_task(a.task).labels))
    model.config.pad_token_id = data["pad_id"]
    rows = [{"input_ids": r["input_ids"][:r["cls_pos"] + 1], "labels": r["label"]} for r in data["rows"]]
    E = a.examples_per_step
    args = TrainingArguments(output_dir=os.path.join(data["workdir"], "hf"), per_device_train_batch_size=E,
                             max_steps=a.steps + 1, learning_rate=a.lr, weight_decay=0.01, max_grad_norm=1.0,
                             warmup_steps=0, logging_strategy="no", save_strategy="no", report_to=[],
                             dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), seed=a.seed,
                             disable_tqdm=True)
    state = {"t0": 0.0, "c0": 0.0, "k": 0}
    info = {"threads": torch.get_num_threads(), "optim": str(args.optim)}

    class LockStep(TrainerCallback):
        def wait(self):
            line = sys.stdin.readline().split()
            if not line or line[0] == "quit":
                print(TAG + json.dumps({"vmhwm_mb": vmhwm_mb()}), flush=True)
                os._exit(0)
            state["t0"], state["c0"] = time.perf_counter(), time.process_time()

        def on_train_begin(self, *args, **kwargs):
            print(TAG + json.dumps({"ready": True, **info}), flush=True)
            self.wait()

        def on_step_end(self, *args, **kwargs):
            k = state["k"]
            batch = rows[k * E:(k + 1) * E]
            width = max(len(r["input_ids"]) for r in batch)
            print(TAG + json.dumps({"dt": time.perf_counter() - state["t0"], "cpu": time.process_time() - state["c0"],
                                    "examples": len(batch), "real_tokens": sum(len(r["input_ids"]) for r in batch),
                                    "run_tokens": width * len(batch), "micro_batches": 1, "fwd": 0.0, "bwd": 0.0,
                                    "opt": 0.0, "loss": None}), flush=True)
            state["k"] += 1
            self.wait()

    class InOrder(Trainer):  # the rows in bench order: step k is rows [kE, (k+1)E)
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    InOrder(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok),
            callbacks=[LockStep()]).train()
    print(TAG + json.dumps({"vmhwm_mb": vmhwm_mb()}), flush=True)
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


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="rte")
    p.add_argument("--method", default="dhrd", choices=sorted(METHODS))
    p.add_argument("--train_file", help="real task JSONL (default: synthetic RTE-like rows)")
    p.add_argument("--rationale_file")
    p.add_argument("--premise_words", type=int, default=45)
    p.add_argument("--hypothesis_words", type=int, default=9)
    p.add_argument("--rationale_words", type=int, default=60)
    p.add_argument("--lm_sections", default="all")
    p.add_argument("--max_seq_len", type=int, default=1024)
    p.add_argument("--examples_per_step", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed steps per method (after 1 warm-up)")
    p.add_argument("--batch_size", type=int, default=8, help="examples per padded micro-batch (loops)")
    p.add_argument("--pack_tokens", type=int, default=4096, help="the engine's --pack_tokens")
    p.add_argument("--rows_per_batch", type=int, default=1, help="the engine's --rows_per_batch")
    p.add_argument("--ds_config", help="the engine's DeepSpeed config (default: its built-in one)")
    p.add_argument("--autocast", default="none", choices=["none", "bf16"], help="the engine's --autocast")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default)")
    p.add_argument("--methods", help="comma-separated (default: all of --method's)")
    p.add_argument("--json_out", help="write the raw per-step results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.methods = a.methods.split(",") if a.methods else list(METHODS[a.method])
    bad = [m for m in a.methods if m not in METHODS[a.method]]
    if bad:
        p.error(f"--methods {','.join(bad)}: not a {a.method} method (choose from {', '.join(METHODS[a.method])})")
    if a.train_file and a.method == "dhrd" and not a.rationale_file:
        p.error("--train_file needs --rationale_file for --method dhrd")
    return a


def report(a, results: dict, rss: dict) -> None:
    def rate(m, key="examples", den="dt"):
        return sum(r[key] for r in results[m]) / sum(r[den] for r in results[m])

    ref = "engine" if "engine" in results else a.methods[0]
    print("| method | examples/s | real tokens/s | run tokens / step | peak RSS | engine / method (examples/s) "
          "| examples per CPU-s | engine / method (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in a.methods:
        ex = rate(m)
        print(f"| {NAMES[m]} | {ex:.2f} | {rate(m, 'real_tokens'):.0f} | "
              f"{statistics.mean(r['run_tokens'] for r in results[m]):.0f} | {rss[m] / 1024:.2f} GiB | "
              f"{rate(ref) / ex:.2f}x | {rate(m, den='cpu'):.3f} | {rate(ref, den='cpu') / rate(m, den='cpu'):.2f}x |")
    print("\ntime split (share of timed step time): " + "; ".join(
        f"{m}: fwd+loss {rate(m, 'fwd'):.0%}, bwd {rate(m, 'bwd'):.0%}, opt {rate(m, 'opt'):.0%}"
        for m in a.methods if m != "hf"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.worker:
        with open(a.data) as f:
            data = json.load(f)
        return {"engine": engine_worker, "hf": hf_worker}.get(a.worker, loop_worker)(a, data)

    workdir = tempfile.mkdtemp(prefix="bench_train_")
    if a.train_file:
        train, rats = a.train_file, a.rationale_file
    else:
        train, rats = synthetic_rte(a.examples_per_step * (a.steps + 1) * 4, a.seed, a.premise_words,
                                    a.hypothesis_words, a.rationale_words, workdir)
    rows, pad_id = build_rows(a, train, rats)
    data = os.path.join(workdir, "data.json")
    with open(data, "w") as f:
        json.dump({"rows": rows, "pad_id": pad_id, "train": train, "rats": rats, "workdir": workdir}, f)
    lens, xlens = [r["length"] for r in rows], [r["cls_pos"] + 1 for r in rows]
    print(f"{a.method}, {a.task}: sequence length mean {statistics.mean(lens):.0f} (min {min(lens)}, max "
          f"{max(lens)}), x mean {statistics.mean(xlens):.0f} tokens; {a.examples_per_step} examples/step, "
          f"1 warm-up + {a.steps} timed steps; work dir {workdir}", flush=True)
    procs = {m: Proc(m, [*argv, "--data", data], workdir) for m in a.methods}
    t_start = time.time()
    try:
        infos = {m: procs[m].read() for m in a.methods}  # all loaded (the loads overlap; nothing timed yet)
        print("workers: " + "; ".join(f"{m} {json.dumps({k: v for k, v in i.items() if k != 'ready'})}"
                                      for m, i in infos.items()), flush=True)
        results: dict[str, list[dict]] = {m: [] for m in a.methods}
        for s in range(a.steps + 1):
            for m in a.methods[s % len(a.methods):] + a.methods[:s % len(a.methods)]:
                r = procs[m].ask(f"step {s}")
                print(f"  step {s} {m:<6} {'warm-up' if s == 0 else 'timed'}: {r['dt']:.1f}s wall, "
                      f"{r['cpu']:.1f}s cpu (fwd {r['fwd']:.1f} bwd {r['bwd']:.1f} opt {r['opt']:.1f}), "
                      f"{r['examples']:.0f} examples, {r['micro_batches']} micro-batches, "
                      f"{r['real_tokens']} real / {r['run_tokens']} run tokens", flush=True)
                if s > 0:
                    results[m].append(r)
        rss = {m: procs[m].ask("quit")["vmhwm_mb"] for m in a.methods}
    finally:
        for pr in procs.values():
            if pr.p.poll() is None:
                pr.p.kill()
            pr.p.wait()
    print(f"(total {time.time() - t_start:.0f}s)\n")
    report(a, results, rss)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"args": vars(a), "results": results, "peak_rss_mb": rss}, f, indent=2)
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_train.py", main))
