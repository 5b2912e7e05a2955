"""Thin entry point. The same file runs under every launcher:

    deepspeed [--num_gpus N] dhrd/train.py --ds_config ds_configs/zero3.json --task rte \
        --model DIR --train_file train.jsonl --eval_file val.jsonl --rationale_file r.jsonl
    torchrun --nproc_per_node N dhrd/train.py ...
    python dhrd/train.py ...          (one process, still through deepspeed.initialize)
    dhrd train ...
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _quiet() -> None:
    """torch's c10d deprecation notices fire on every ZeRO collective; they say nothing
    about this run."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated")


def main(argv: list[str] | None = None) -> int:
    _quiet()
    from dhrd.config import apply_method, explicit_fields, parse_args
    from dhrd.engine import TrainingDiverged, run, shutdown_distributed

    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, loss_args, train_args, rest = parse_args(argv)
    # launchers pass --local_rank / --local-rank; anything else is a typo worth stopping for
    unknown = [a for a in rest if not a.startswith(("--local_rank", "--local-rank")) and not a.isdigit()]
    if unknown:
        raise SystemExit(f"unknown arguments: {' '.join(unknown)}")
    apply_method(loss_args, data_args, explicit_fields(argv))
    if not model_args.model:
        raise SystemExit("--model is required (an HF model directory, or 'smollm2')")
    try:
        run(model_args, data_args, loss_args, train_args)
    except TrainingDiverged as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
