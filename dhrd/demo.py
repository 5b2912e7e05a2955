"""The embedded default: a reasoning task the project generates itself, trained with DHRD
and with the pooled baseline through the same engine, eval accuracies printed side by side.

    python -m dhrd.demo                   # real SmolLM2-135M-Instruct on CPU, a few minutes
    python -m dhrd.demo --seeds 0,1,2     # more seeds (each seed: new data and init)
    python -m dhrd.demo --model DIR --train 16 --steps 2    # any model, smaller

Task "sum4": "Is a + b + c + d more than 20?" (digits 1-9, never exactly 20). The label
is the comparison of one intermediate value, the sum, with 20; the deterministic
rationale writes that sum out and compares it ("9 + 8 + 7 + 5 = 29. 29 > 20."), so it
carries everything the label needs. The classifier never sees the rationale: DHRD only
uses it as extra LM supervision in training.

Both methods get the same data, seed, steps, lr and engine, and the same number of
examples per optimizer step (``--batch``; the engine packs as many micro-batches as that
takes, so a DHRD step, with its longer sequences, costs more compute). The only
difference is the method preset (dhrd: alpha 1, beta 1, with rationales; pooled:
alpha 0, x only). The LM term covers the rationale and the answer (``lm_sections``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys

TASK_NAME = "sum4"
THRESHOLD = 20


def make_example(rng: random.Random, idx: int) -> tuple[dict, dict]:
    """One task row and its rationale row; the rationale's sum decides the label."""
    while True:
        digits = [rng.randint(1, 9) for _ in range(4)]
        if sum(digits) != THRESHOLD:  # never equal: the label is well defined
            break
    s, expr = sum(digits), " + ".join(map(str, digits))
    label = "yes" if s > THRESHOLD else "no"
    rationale = f"{expr} = {s}. {s} {'>' if s > THRESHOLD else '<'} {THRESHOLD}."
    return ({"idx": idx, "question": f"Is {expr} more than {THRESHOLD}?", "label": label},
            {"id": str(idx), "rationale": rationale, "teacher_label": label})


def register_task():
    """The sum4 task in the registry (idempotent), in the local JSONL format."""
    from .data.tasks import TASKS, Task, need_text, register

    if TASK_NAME in TASKS:
        return TASKS[TASK_NAME]
    return register(Task(TASK_NAME, ("no", "yes"), ("no", "yes"),
                         f"Decide whether a sum of four digits is more than {THRESHOLD}.", ("accuracy",), None,
                         lambda r: need_text(r, "question"), ("no", "yes")))


def write_data(workdir: str, n_train: int, n_eval: int, seed: int) -> dict:
    rng = random.Random(seed)
    os.makedirs(workdir, exist_ok=True)
    paths = {k: os.path.join(workdir, f"{k}.jsonl") for k in ("train", "eval", "rationales")}
    rows = [make_example(rng, i) for i in range(n_train + n_eval)]
    with open(paths["train"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r, _ in rows[:n_train])
    with open(paths["rationales"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for _, r in rows[:n_train])
    with open(paths["eval"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r, _ in rows[n_train:])
    return paths


def run_method(method: str, args, paths: dict, seed: int) -> dict:
    from .config import DataArgs, LossArgs, ModelArgs, TrainArgs, apply_method
    from .engine import run

    model_args = ModelArgs(model=args.model)
    data_args = DataArgs(task=TASK_NAME, train_file=paths["train"], eval_file=paths["eval"],
                         rationale_file=paths["rationales"], max_seq_len=96, pack_tokens=args.pack_tokens,
                         lm_sections=args.lm_sections)
    loss_args = LossArgs(method=method)
    apply_method(loss_args, data_args, explicit=set())
    train_args = TrainArgs(output_dir=os.path.join(args.workdir, f"{method}-seed{seed}"), seed=seed,
                           max_steps=args.steps, lr=args.lr, warmup_steps=2, global_batch_size=args.batch,
                           micro_batches_per_step=0, eval_every=args.eval_every,
                           log_sequences=2, progress=not args.quiet, export_final=False)
    return run(model_args, data_args, loss_args, train_args)


def _stats(xs: list[float], sign: str = "") -> str:
    sd = f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):{sign}.3f}{sd}"


def report(acc: dict[str, list[float]], seeds: list[int]) -> str:
    """The accuracy table: one line per seed, then the mean ± std over seeds, with the
    DHRD minus pooled gap where both ran."""
    cols = {m: acc[m] for m in acc}
    if "dhrd" in acc and "pooled" in acc:
        cols["dhrd - pooled"] = [d - p for d, p in zip(acc["dhrd"], acc["pooled"])]
    sign = {k: "+" if k == "dhrd - pooled" else "" for k in cols}
    lines = [f"  {'seed':<6}" + "".join(f"{k:>16}" for k in cols)]
    for i, seed in enumerate(seeds):
        lines.append(f"  {seed:<6}" + "".join(f"{v[i]:>{sign[k]}16.3f}" for k, v in cols.items()))
    if len(seeds) > 1:
        lines.append(f"  {'mean':<6}" + "".join(f"{_stats(v, sign[k]):>16}" for k, v in cols.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dhrd.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model directory, or smollm2 (packaged)")
    p.add_argument("--workdir", default="outputs/demo")
    p.add_argument("--train", type=int, default=64, help="training examples")
    p.add_argument("--eval", type=int, default=200, help="eval examples (classifier only: cheap)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16, help="examples per optimizer step, both methods")
    p.add_argument("--pack_tokens", type=int, default=128, help="tokens per packed micro-batch")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lm_sections", default="rationale+answer", help="tokens the DHRD LM term covers")
    p.add_argument("--eval_every", type=int, default=0, help="also evaluate every N steps (0: at the end)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds; each draws new data and init")
    p.add_argument("--methods", default="dhrd,pooled")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    register_task()
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    acc: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:
        paths = write_data(os.path.join(args.workdir, f"data-seed{seed}"), args.train, args.eval, seed)
        for m in methods:
            acc[m].append(run_method(m, args, paths, seed)["accuracy"])
    print(f"\n{TASK_NAME} (is a + b + c + d more than {THRESHOLD}?), {args.train} train / {args.eval} eval "
          f"examples, {args.steps} steps of {args.batch} examples, lr {args.lr}, model {args.model}; "
          "eval accuracy:")
    print(report(acc, seeds))
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "seeds": seeds, "accuracy": acc}, f, indent=2)
    return 0


if __name__ == "__main__":
    from .engine import shutdown_distributed

    try:
        sys.exit(main())
    finally:
        shutdown_distributed()
