"""Export the classifier (decoder body + classifier head, no reasoning head) from a
training output: a ZeRO checkpoint of any step, or final/. Runs on CPU, no distributed job.

    python tools/export_classifier.py OUTPUT_DIR OUT_DIR [--format lean|hf|all] [--tag step_00000200|latest|final]
        [--dtype float32|bfloat16|float16] [--int8]

--format lean (default): the lean directory that ``dhrd predict`` and ``dhrd serve`` load
(any head, int8 option; dhrd.export.lean). --format hf: a standard Hugging Face
``<Arch>ForSequenceClassification`` directory with a model card, for transformers
pipelines, vLLM (``--runner pooling``) and SGLang, no project code needed; it needs a
model trained with ``--head linear --pooling last`` (dhrd.export.hf). --format all: OUT_DIR/lean,
and OUT_DIR/hf where the head allows (else one line says why not; what slurm/train.sh's
EXPORT=all runs after training).
OUTPUT_DIR may also be a checkpoints/<tag> or a final/ directory.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhrd.cli_errors import run_main  # noqa: E402
from dhrd.export.lean import export_lean  # noqa: E402
from dhrd.progress import quiet_library_bars  # noqa: E402
from dhrd.serve.lean_format import DTYPES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="training output dir, checkpoints/<tag> dir, or final/ dir")
    p.add_argument("out_dir", help="the directory to write")
    p.add_argument("--format", default="lean", choices=("lean", "hf", "all"),
                   help="lean: dhrd's lean classifier (any head); hf: a standard <Arch>ForSequenceClassification "
                        "directory with a model card (needs --head linear --pooling last at training); all: "
                        "OUT_DIR/lean, and OUT_DIR/hf where the head allows")
    p.add_argument("--tag", default=None, help="step_N, latest or final (default: final/ if present, else latest)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--int8", action="store_true",
                   help="lean only: dynamic int8 Linear layers at load time (CPU serving)")
    args = p.parse_args(argv)
    quiet_library_bars()  # in a log (a Slurm job's): no tqdm bars of loading and writing weights
    if args.format == "hf" and args.int8:
        p.error("--int8 is a lean-format option (HF directories hold float weights)")
    if args.format == "all":
        return export_all(args)
    if args.format == "hf":
        from dhrd.export.hf import export_hf

        report = export_hf(args.source, args.out_dir, tag=args.tag, dtype=args.dtype)
    else:
        report = export_lean(args.source, args.out_dir, tag=args.tag, dtype=args.dtype,
                             quantize="int8" if args.int8 else "none")
    print(report.format())
    return 0


def export_all(args) -> int:
    """The lean classifier, then the HF one unless the trained head or backbone rules it
    out (a reason, not a failure: the lean export serves every head)."""
    from dhrd.export.hf import export_hf

    print(export_lean(args.source, os.path.join(args.out_dir, "lean"), tag=args.tag, dtype=args.dtype,
                      quantize="int8" if args.int8 else "none").format())
    try:
        report = export_hf(args.source, os.path.join(args.out_dir, "hf"), tag=args.tag, dtype=args.dtype)
    except ValueError as e:
        print(f"no HF export: {e}")
        return 0
    print(report.format())
    return 0


if __name__ == "__main__":
    from dhrd.export.lean import CheckpointError

    def _main(argv):
        try:
            return main(argv)
        except CheckpointError as e:  # a RuntimeError: named here, not a bug
            raise ValueError(str(e)) from None

    sys.exit(run_main("export_classifier", _main))
