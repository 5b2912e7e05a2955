"""``dhrd export SOURCE OUT_DIR``: the classifier (decoder body + classifier head, no
reasoning head) from a training output: a ZeRO checkpoint of any step, or final/. Runs
on CPU, no distributed job. ``tools/export_classifier.py`` is an alias of this command.

    dhrd export OUTPUT_DIR OUT_DIR [--format lean|hf|all] [--tag step_00000200|latest|final]
        [--dtype float32|bfloat16|float16] [--int8]

--format lean (default): the lean directory that ``dhrd predict`` and ``dhrd serve`` load
(any head, int8 option; dhrd.export.lean). --format hf: a standard Hugging Face
``<Arch>ForSequenceClassification`` directory with a model card, for transformers
pipelines, vLLM (``--runner pooling``) and SGLang, no project code needed, which ``dhrd
predict`` and ``dhrd serve`` load too; it needs a model trained with ``--head linear
--pooling last`` (dhrd.export.hf). --format all: OUT_DIR/lean, and OUT_DIR/hf where the
head allows (else one line says why not; what slurm/train.sh's EXPORT=all runs after
training). OUTPUT_DIR may also be a checkpoints/<tag> or a final/ directory.
"""

from __future__ import annotations

import argparse
import os

from ..progress import quiet_library_bars
from ..serve.lean_format import DTYPES
from .lean import CheckpointError, export_lean


def build_parser(prog: str = "dhrd export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
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
    return p


def main(argv: list[str] | None = None, prog: str = "dhrd export") -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    quiet_library_bars()  # in a log (a Slurm job's): no tqdm bars of loading and writing weights
    if args.format == "hf" and args.int8:
        p.error("--int8 is a lean-format option (HF directories hold float weights)")
    try:
        return export(args)
    except CheckpointError as e:  # a RuntimeError: a user's missing or incomplete output, not a bug
        raise ValueError(str(e)) from None


def export(args: argparse.Namespace) -> int:
    if args.format == "all":
        return export_all(args)
    if args.format == "hf":
        from .hf import export_hf

        report = export_hf(args.source, args.out_dir, tag=args.tag, dtype=args.dtype)
    else:
        report = export_lean(args.source, args.out_dir, tag=args.tag, dtype=args.dtype,
                             quantize="int8" if args.int8 else "none")
    print(report.format())
    return 0


def export_all(args: argparse.Namespace) -> int:
    """The lean classifier, then the HF one unless the trained head or backbone rules it
    out (a reason, not a failure: the lean export serves every head)."""
    from .hf import export_hf

    print(export_lean(args.source, os.path.join(args.out_dir, "lean"), tag=args.tag, dtype=args.dtype,
                      quantize="int8" if args.int8 else "none").format())
    try:
        report = export_hf(args.source, os.path.join(args.out_dir, "hf"), tag=args.tag, dtype=args.dtype)
    except ValueError as e:
        print(f"no HF export: {e}")
        return 0
    print(report.format())
    return 0
