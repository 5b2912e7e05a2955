"""The embedded default: a reasoning task the project generates itself, trained with DHRD
and with the pooled baseline through the same engine, eval metrics printed side by side.

    python -m dhrd.demo                   # real SmolLM2-135M-Instruct on CPU, a few minutes
    python -m dhrd.demo --model DIR --train 32 --steps 4    # any model, smaller

Task "arith": "Is a + b * c greater than d?" The answer needs the intermediate product
and sum, which the classifier must compute in one forward pass; the deterministic
rationale writes them out ("b * c = p. a + p = s. s is greater than d."), which the
reasoning head is trained to produce: the setting where rationales should matter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

TASK_NAME = "arith"


def make_example(rng: random.Random, idx: int) -> tuple[dict, dict]:
    a, b, c = rng.randint(1, 20), rng.randint(2, 9), rng.randint(2, 9)
    s = a + b * c
    d = s + rng.choice([-1, 1]) * rng.randint(1, 10)  # never equal: the label is well defined
    yes = s > d
    row = {"idx": idx, "expression": f"{a} + {b} * {c}", "threshold": d, "label": "yes" if yes else "no"}
    rationale = (f"{b} * {c} = {b * c}. {a} + {b * c} = {s}. "
                 f"{s} is {'greater' if yes else 'less'} than {d}.")
    return row, {"id": str(idx), "rationale": rationale, "teacher_label": row["label"]}


def register_task():
    """The arith task in the registry (idempotent), in the local JSONL format."""
    from .data.tasks import TASKS, Task, need, need_text, register

    if TASK_NAME in TASKS:
        return TASKS[TASK_NAME]

    def template(r):
        return (f"Is {need_text(r, 'expression')} greater than {need(r, 'threshold', int)}? "
                "Answer yes or no.")

    return register(Task(TASK_NAME, ("no", "yes"), ("no", "yes"),
                         "Decide whether an arithmetic expression exceeds a threshold.", ("accuracy",), None,
                         template, ("no", "yes")))


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


def run_method(method: str, args, paths: dict) -> dict:
    from .config import DataArgs, LossArgs, ModelArgs, TrainArgs, apply_method
    from .engine import run

    model_args = ModelArgs(model=args.model)
    data_args = DataArgs(task=TASK_NAME, train_file=paths["train"], eval_file=paths["eval"],
                         rationale_file=paths["rationales"], max_seq_len=96, pack_tokens=args.pack_tokens)
    loss_args = LossArgs(method=method)
    apply_method(loss_args, data_args, explicit=set())
    train_args = TrainArgs(output_dir=os.path.join(args.workdir, method), seed=args.seed, max_steps=args.steps,
                           lr=args.lr, warmup_steps=2, micro_batches_per_step=args.micro_batches,
                           log_sequences=2, progress=not args.quiet, export_final=False)
    return run(model_args, data_args, loss_args, train_args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dhrd.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model directory, or smollm2 (packaged)")
    p.add_argument("--workdir", default="outputs/demo")
    p.add_argument("--train", type=int, default=160, help="training examples")
    p.add_argument("--eval", type=int, default=100, help="eval examples")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro_batches", type=int, default=2, help="packed micro-batches per step")
    p.add_argument("--pack_tokens", type=int, default=384)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="dhrd,pooled")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    register_task()
    paths = write_data(os.path.join(args.workdir, "data"), args.train, args.eval, args.seed)
    results = {m: run_method(m, args, paths) for m in args.methods.split(",")}
    print(f"\narith (a + b * c > d), {args.train} train / {args.eval} eval examples, {args.steps} steps, "
          f"model {args.model}")
    for method, metrics in results.items():
        print(f"  {method:<8} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    from .engine import shutdown_distributed

    try:
        sys.exit(main())
    finally:
        shutdown_distributed()
