"""Rebuild the e-SNLI slice bundled for the README's main job (dhrd/demo_data/esnli/)
from the palm-cot release: the carve of experiments/cpu_small.yaml (1500-example dev
split by premise, seed 0), then the first TRAIN rows of its train split and the first
DEV rows of its dev split, with their PaLM 540B rationales. Ids (``idx``) are row
numbers of esnli_valid.json, so the slice's rationales line up with any other carve.

    python tools/make_demo_slice.py --palm ../shared/data/palm-cot
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dhrd", "demo_data", "esnli")
KEEP = ("idx", "premise", "hypothesis", "label")


def main(argv=None) -> int:
    from dhrd.experiment.prepare import carve
    from dhrd.jsonl import read_jsonl
    from dhrd.teacher.palm_cot import import_palm_cot, write_records

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--palm", required=True, help="the palm-cot directory")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--dev", type=int, default=500)
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    source = os.path.join(a.palm, "esnli", "esnli_valid.json")
    with tempfile.TemporaryDirectory() as tmp:
        carve("esnli", source, f"{tmp}/train.jsonl", f"{tmp}/dev.jsonl", dev_size=1500, seed=0, group_by="premise")
        train = [r for _, r in read_jsonl(f"{tmp}/train.jsonl")][:a.train]
        dev = [r for _, r in read_jsonl(f"{tmp}/dev.jsonl")][:a.dev]
    rationales = {r["id"]: r for r in import_palm_cot("esnli", source, os.path.join(a.palm, "esnli", "llm"),
                                                       "valid").records}
    slim = lambda rows: [{k: r[k] for k in KEEP} for r in rows]  # noqa: E731
    write_records(slim(train), os.path.join(a.out, "train.jsonl"))
    write_records(slim(dev), os.path.join(a.out, "dev.jsonl"))
    keep = ("id", "rationale", "teacher_label", "teacher")
    write_records([{k: rationales[str(r["idx"])][k] for k in keep} for r in train if str(r["idx"]) in rationales],
                  os.path.join(a.out, "rationales.jsonl"))
    print(f"wrote {len(train)} train, {len(dev)} dev rows and their rationales to {a.out}")
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("make_demo_slice.py", main))
