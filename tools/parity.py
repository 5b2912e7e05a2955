"""The engine against the plain padded loop (tools/plain_loop.py) on the same rows, dev
split, recipe and seeds, for pooled and DHRD: a table of dev accuracy, the engine - plain
difference per seed and its 95% paired bootstrap interval. Exits 1 when the engine's mean
falls more than ``--tolerance`` points below the plain loop's for any method.

    python tools/parity.py --task esnli --model smollm2 --train_file train.jsonl \
        --eval_file dev.jsonl --rationale_file r.jsonl --seeds 0,1,2 --out runs/parity

Runs go two at a time (one thread each) and are kept: rerun to fill in what is missing.
``--run plain`` trains only the plain loop and takes the engine's runs from ``--out`` as
they are (e.g. links to an experiment grid's runs of the same recipe: ``engine-M-sS``).
Same examples seen by both: one epoch of the train file, exactly ``--batch_size`` random
examples a step (the engine's default ``--batching exact``), the same lr, warm-up and
sequence cap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from dhrd.jsonl import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def engine_cmd(a, method, seed, out):
    return [sys.executable, os.path.join(REPO, "dhrd", "train.py"), "--task", a.task, "--model", a.model,
            "--train_file", a.train_file, "--eval_file", a.eval_file, "--rationale_file", a.rationale_file,
            # the plain loop's recipe: the MLP head, alpha constant (dhrd_paper, whatever dhrd's default)
            "--method", "dhrd_paper" if method == "dhrd" else method, "--head", "mlp",
            "--lr", str(a.lr), "--epochs", "1", "--global_batch_size", str(a.batch_size),
            "--max_seq_len", str(a.max_seq_len), "--warmup_steps", "5",
            "--seed", str(seed), "--output_dir", out, "--progress", "false", "--export_final", "false"]


def plain_cmd(a, method, seed, out):
    return [sys.executable, os.path.join(REPO, "tools", "plain_loop.py"), "--task", a.task, "--model", a.model,
            "--train_file", a.train_file, "--eval_file", a.eval_file, "--rationale_file", a.rationale_file,
            "--method", method, "--lr", str(a.lr), "--batch_size", str(a.batch_size), "--max_seq_len",
            str(a.max_seq_len), "--seed", str(seed), "--threads", "1", "--out", out]


def predictions(kind: str, out: str) -> tuple[list[int], list[int]] | None:
    """(labels, predictions) of a finished run, or None."""
    if kind == "engine":
        path = os.path.join(out, "eval_predictions.jsonl")
        if not os.path.exists(path):
            return None
        rows = [r for _, r in read_jsonl(path)]
        return [r["label"] for r in rows], [r["pred"] for r in rows]
    path = os.path.join(out, "plain_results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    return res["labels"], res["predictions"]


def run_all(a, jobs: list[tuple[str, list[str], str]]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    todo = [j for j in jobs if predictions(j[0], j[2]) is None]
    running = []
    while todo or running:
        while todo and len(running) < a.parallel:
            kind, cmd, out = todo.pop(0)
            os.makedirs(out, exist_ok=True)
            log = open(os.path.join(out, "parity.log"), "w")
            print(f"start {os.path.basename(out)}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), out, log))
        proc, out, log = running.pop(0)
        proc.wait()
        log.close()
        print(f"{'done' if proc.returncode == 0 else 'FAILED'} {os.path.basename(out)}", flush=True)


def main(argv=None) -> int:
    from dhrd.data.tasks import get_task
    from dhrd.experiment.aggregate import RunResult, paired_bootstrap

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--eval_file", required=True)
    p.add_argument("--rationale_file", required=True)
    p.add_argument("--methods", default="pooled,dhrd")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=1.5, help="points the engine may fall below the plain loop")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="outputs/parity")
    p.add_argument("--run", default="engine,plain", help="which trainers to run; the table uses whatever is there")
    a = p.parse_args(argv)
    methods, seeds = a.methods.split(","), [int(s) for s in a.seeds.split(",")]
    out = lambda kind, m, s: os.path.join(a.out, f"{kind}-{m}-s{s}")  # noqa: E731
    jobs = []
    for s in seeds:
        for m in methods:
            jobs += [("engine", engine_cmd(a, m, s, out("engine", m, s)), out("engine", m, s)),
                     ("plain", plain_cmd(a, m, s, out("plain", m, s)), out("plain", m, s))]
    run_all(a, [j for j in jobs if j[0] in a.run.split(",")])
    task = get_task(a.task)
    lines = ["| method | engine (mean ± std) | plain loop | engine - plain per seed | mean | 95% paired bootstrap |",
             "|---|---|---|---|---|---|"]
    failed, table = [], {}
    for m in methods:
        pairs, e_acc, p_acc = [], [], []
        for s in seeds:
            e, pl = predictions("engine", out("engine", m, s)), predictions("plain", out("plain", m, s))
            if e is None or pl is None:
                continue
            if e[0] != pl[0]:
                raise SystemExit(f"{m} seed {s}: the two runs scored different dev examples")
            er, pr = RunResult(None, e[0], e[1], None, 0.0), RunResult(None, pl[0], pl[1], None, 0.0)
            pairs.append((er, pr))
            e_acc.append(task.score(e[1], e[0])[task.metrics[0]])
            p_acc.append(task.score(pl[1], pl[0])[task.metrics[0]])
        if not pairs:
            continue
        diffs = [100 * (x - y) for x, y in zip(e_acc, p_acc)]
        lo, hi = paired_bootstrap(pairs, task, n_boot=1000)
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        lines.append(f"| {m} | {100 * statistics.mean(e_acc):.2f} ± {100 * sd(e_acc):.2f} | "
                     f"{100 * statistics.mean(p_acc):.2f} ± {100 * sd(p_acc):.2f} | "
                     f"{' / '.join(f'{d:+.2f}' for d in diffs)} | {statistics.mean(diffs):+.2f} | "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] |")
        table[m] = {"engine": e_acc, "plain": p_acc, "seeds": seeds[:len(e_acc)], "ci": [lo, hi]}
        if statistics.mean(diffs) < -a.tolerance:
            failed.append(m)
    print("\n".join(lines))
    with open(os.path.join(a.out, "parity.json"), "w") as f:
        json.dump({"args": vars(a), "table": table}, f, indent=1)
    if failed:
        print(f"engine more than {a.tolerance} points below the plain loop: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("parity.py", main))
