"""Packing efficiency (real tokens / token budget) of best-fit-decreasing packing on
real task files, e.g. ../shared/data/superglue/RTE/train.jsonl.

    python tools/bench_packing.py --task rte --file ../shared/data/superglue/RTE/train.jsonl \
        [--rationale_file r.jsonl | --rationale_words 60] [--model smollm2] [--pack_tokens 4096]

Without rationales for the file, ``--rationale_words`` appends a synthetic rationale of
about that many words per example (lognormal spread), to see DHRD-length sequences.
Prints a table: budget, rows, efficiency, mean/max sequence length, and the time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from dhrd.config import DataArgs
from dhrd.data.packing import best_fit_decreasing, packing_efficiency
from dhrd.data.pipeline import build_training_set
from dhrd.data.tasks import get_task
from dhrd.model.backbones import load_backbone, load_tokenizer, resolve_model_path
from dhrd.model.dual_head import add_reasoning_tokens


def synthetic_rationales(examples, words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = "because the passage says so therefore it follows that this is not what we expect".split()
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "w") as f:
        for ex in examples:
            n = max(5, int(rng.lognormvariate(0, 0.4) * words))
            f.write(json.dumps({"id": ex.id, "rationale": " ".join(rng.choice(vocab) for _ in range(n))}) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--model", default="smollm2", help="model dir whose tokenizer to use")
    p.add_argument("--rationale_file")
    p.add_argument("--rationale_words", type=int, default=0)
    p.add_argument("--pack_tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--max_seq_len", type=int, default=1024)
    a = p.parse_args(argv)

    task = get_task(a.task)
    examples = task.read(a.file)
    rationale_file = a.rationale_file
    if not rationale_file and a.rationale_words:
        rationale_file = synthetic_rationales(examples, a.rationale_words)
    path = resolve_model_path(a.model)
    tok = load_tokenizer(path)
    special = add_reasoning_tokens(tok, load_backbone(path))
    args = DataArgs(task=a.task, rationale_file=rationale_file, max_seq_len=a.max_seq_len,
                    pack_tokens=max(a.pack_tokens))
    ds, report = build_training_set(task, examples, tok, special, args)
    lengths = ds["length"]
    print(report.format())
    print(f"\n{a.task}: {len(lengths)} sequences, mean {sum(lengths) / len(lengths):.1f} tokens, "
          f"max {max(lengths)}\n")
    print("| pack_tokens | rows | efficiency | pack time (ms) |\n|---|---|---|---|")
    for budget in a.pack_tokens:
        if budget < max(lengths):
            print(f"| {budget} | - | sequences up to {max(lengths)} do not fit | - |")
            continue
        t = time.perf_counter()
        bins = best_fit_decreasing(lengths, budget)
        ms = (time.perf_counter() - t) * 1e3
        print(f"| {budget} | {len(bins)} | {packing_efficiency(lengths, bins, budget):.4f} | {ms:.1f} |")


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_packing.py", main))
