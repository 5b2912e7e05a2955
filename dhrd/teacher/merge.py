"""``dhrd rationales merge``: join shard files (and regenerated subsets) into one,
checking that no id is doubled (unless a later file is meant to replace it) and, given
the task file, that none is missing."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ..data.errors import DataError
from ..data.tasks import read_examples
from ..fileio import atomic_write_jsonl
from .generation_log import read_log


def merge(inputs: Sequence[str], out: str, *, replace: bool = False,
          expected_ids: Iterable[str] | None = None) -> dict[str, int]:
    """Join rationale files into ``out`` (written to a temporary file, then renamed).
    A doubled id is an error, unless ``replace``: then a later file's record replaces an
    earlier one's (how regenerated ids replace the first attempt). With
    ``expected_ids``, ids missing from all inputs are an error."""
    merged: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    replaced = 0
    for path in inputs:
        if not os.path.exists(path):
            raise DataError("no such file", path=path)
        for lineno, row in read_log(path):
            rid = row["id"]
            if rid in merged:
                if not replace:
                    raise DataError(f"id {rid!r} also at {where[rid]} (shards must be disjoint; "
                                    "--replace lets later files win)", path=path, line=lineno, field="id")
                replaced += 1
                del merged[rid]  # re-insert: the order follows the file that won
            merged[rid], where[rid] = row, f"{path}:{lineno}"
    missing = []
    if expected_ids is not None:
        missing = [i for i in expected_ids if i not in merged]
        if missing:
            raise DataError(f"{len(missing)} id(s) missing from all inputs, e.g. {missing[:3]}", path=out)
    atomic_write_jsonl(out, merged.values())
    return {"records": len(merged), "replaced": replaced, "inputs": len(inputs)}


def merge_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dhrd rationales merge",
                                description="Join shard (or regenerated) rationale files into one.")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--replace", action="store_true", help="a later file's record replaces an earlier one's")
    p.add_argument("--task", help="with --input: check that every id of the task file is there")
    p.add_argument("--input", help="the task's JSONL file")
    args = p.parse_args(argv)
    expected = None
    if args.task and args.input:
        expected = [ex.id for ex in read_examples(args.task, args.input, require_labels=False)]
    stats = merge(args.inputs, args.out, replace=args.replace, expected_ids=expected)
    print(f"{args.out}: {stats['records']} records from {stats['inputs']} files"
          + (f", {stats['replaced']} replaced" if stats["replaced"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(merge_main())
