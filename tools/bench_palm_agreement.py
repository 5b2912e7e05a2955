#!/usr/bin/env python
"""Label agreement of the released PaLM 540B chain-of-thought rationales with the gold
labels, per dataset: how much a label-consistency filter would drop. Reads only; writes
nothing.

    python tools/bench_palm_agreement.py [--root ../shared/data/palm-cot] [--confusion]
"""

import argparse
import os
import sys
import time

from dhrd.data.tasks import get_task
from dhrd.teacher.consistency import length_stats
from dhrd.teacher.palm_cot import RELEASED, format_agreement, format_confusion, import_palm_cot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"cqa": "train", "esnli": "valid", "anli1": "valid"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(REPO, "..", "shared", "data", "palm-cot"),
                   help="the palm-cot directory")
    p.add_argument("--tasks", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--confusion", action="store_true", help="also print gold x teacher tables")
    args = p.parse_args(argv)
    for name in args.tasks:
        released, split, task = RELEASED[name], SPLITS[name], get_task(name)
        start = time.perf_counter()
        result = import_palm_cot(task, os.path.join(args.root, released.examples.format(split=split)),
                                 os.path.join(args.root, released.llm_dir), split)
        words = length_stats(r["rationale"] for r in result.records)["words"]
        print(f"{format_agreement(name, result)}  [{time.perf_counter() - start:.2f}s; rationale words "
              f"mean {words['mean']:.1f} p50 {words['p50']:.0f} p90 {words['p90']:.0f} max {words['max']:.0f}]")
        if args.confusion:
            print(format_confusion(task, result))
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_palm_agreement.py", main))
