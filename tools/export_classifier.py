"""Export a lean classifier (decoder body + classifier head, no reasoning head) from a
training output: a ZeRO checkpoint of any step, or final/. Runs on CPU, no distributed job.

    python tools/export_classifier.py OUTPUT_DIR LEAN_DIR [--tag step_00000200|latest|final]
        [--dtype float32|bfloat16|float16] [--int8]

OUTPUT_DIR may also be a checkpoints/<tag> or a final/ directory. The library is dhrd.lean.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhrd.lean import DTYPES, CheckpointError, export_lean  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="training output dir, checkpoints/<tag> dir, or final/ dir")
    p.add_argument("out_dir", help="the lean classifier directory to write")
    p.add_argument("--tag", default=None, help="step_N, latest or final (default: final/ if present, else latest)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--int8", action="store_true",
                   help="flag the directory for dynamic int8 Linear layers at load time (CPU serving; fp32 weights)")
    args = p.parse_args(argv)
    try:
        report = export_lean(args.source, args.out_dir, tag=args.tag, dtype=args.dtype,
                             quantize="int8" if args.int8 else "none")
    except (CheckpointError, ValueError, OSError) as e:
        print(f"export_classifier: error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
