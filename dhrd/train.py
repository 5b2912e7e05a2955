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


def preflight(model_args, data_args, loss_args, train_args) -> None:
    """Everything that can be checked before distributed init and the model load: the
    task, the files, the DeepSpeed config. Raises ValueError / FileNotFoundError naming
    what is wrong."""
    from dhrd.data.pipeline import HUB_PREFIX
    from dhrd.data.tasks import check_formulation, get_task
    from dhrd.engine.cot_eval import resolve_eval_mode
    from dhrd.engine.ds_config import check_train_settings, load_ds_config

    check_formulation(get_task(data_args.task), data_args.formulation)
    if data_args.formulation == "choice" and resolve_eval_mode(train_args.eval_mode, loss_args.beta) != "classifier":
        raise ValueError("--formulation choice evaluates its choice head only: CoT evaluation decodes from the "
                         "classify input (use --eval_mode classifier, and beta > 0 so the head is trained)")
    if not data_args.train_file:
        raise ValueError("--train_file is required")
    needs_rationales = loss_args.alpha > 0 and data_args.rationale_mode != "none"
    for what, path in (("train_file", data_args.train_file), ("eval_file", data_args.eval_file),
                       ("rationale_file", data_args.rationale_file if needs_rationales else None)):
        if path and not path.startswith(HUB_PREFIX) and not os.path.isfile(path):
            raise FileNotFoundError(f"--{what} {path}: no such file")
    check_train_settings(load_ds_config(train_args.ds_config), train_args.lr_schedule, train_args.autocast,
                          train_args.compile)
    if train_args.autocast != "none" and model_args.dtype not in ("auto", "float32"):
        raise ValueError(f"--autocast {train_args.autocast} trains fp32 weights; --dtype {model_args.dtype} "
                         "asks for half-precision ones: drop one")
    if model_args.model != "smollm2" and (os.sep in model_args.model or model_args.model.startswith(".")) \
            and not os.path.isdir(model_args.model):
        if model_args.model.endswith(".gguf"):  # an existing file was split into folder + --gguf_file
            raise FileNotFoundError(f"--model {model_args.model}: no such GGUF file (--model takes a model "
                                    "directory, a .gguf file, or a directory with --gguf_file NAME)")
        raise FileNotFoundError(f"--model {model_args.model}: no such directory")


def main(argv: list[str] | None = None) -> int:
    """Our own errors (bad arguments, data, configs, files) end as one line on stderr and
    exit code 2; DHRD_DEBUG=1 shows the traceback. Anything else is a bug: traceback."""
    return train_main(argv)[0]


def train_main(argv: list[str] | None = None) -> tuple[int, int]:
    """``main``'s work; returns the exit code and the world size the run had, which decides
    how a launched process ends (``dist.exit_process``)."""
    _quiet()
    from dhrd.logs import setup as setup_logging
    from dhrd.progress import quiet_library_bars

    setup_logging()  # the dhrd loggers' lines on stderr as "[rank0] ..." (DHRD_LOG_LEVEL)
    quiet_library_bars()  # a log (Slurm's, train.log) gets plain progress lines, not tqdm bars
    from dhrd.cli_errors import USER_ERRORS, report_user_error
    from dhrd.config import apply_method, explicit_fields, parse_args
    from dhrd.engine.dist import shutdown_distributed
    from dhrd.engine.step import TrainingDiverged
    from dhrd.engine.trainer import run

    argv = list(sys.argv[1:] if argv is None else argv)
    code, finished = 0, False
    try:
        model_args, data_args, loss_args, train_args, rest = parse_args(argv)
        # launchers pass --local_rank / --local-rank; anything else is a typo worth stopping for
        unknown = [a for a in rest if not a.startswith(("--local_rank", "--local-rank")) and not a.isdigit()]
        if unknown:
            raise ValueError(f"unknown arguments: {' '.join(unknown)}")
        apply_method(loss_args, data_args, explicit_fields(argv), model_args)
        if not model_args.model:
            raise ValueError("--model is required (an HF model directory, or 'smollm2')")
        preflight(model_args, data_args, loss_args, train_args)
        run(model_args, data_args, loss_args, train_args)
        finished = True
    except TrainingDiverged as e:
        print(f"training stopped: {e}", file=sys.stderr)
        code = 3
    except USER_ERRORS as e:
        code = report_user_error("train.py", e)
    finally:
        world = shutdown_distributed(synchronize=finished)
    return code, world


if __name__ == "__main__":
    from dhrd.engine.dist import exit_process

    exit_process(*train_main())
