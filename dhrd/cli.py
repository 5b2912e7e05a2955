"""``dhrd``: the console script. Each subcommand is a thin face over a library module,
imported only when used (so ``dhrd tasks`` does not import torch's heavy parts)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help); the module's main(argv) does the work
DELEGATES = {
    "train": ("dhrd.train", "train a dual-head classifier (see dhrd train --help)"),
    "data": ("dhrd.cli_data", "tokenise a task file with its rationales and print the data report"),
    "rationales": ("dhrd.teacher.cli", "generate / import / check teacher rationales"),
    "predict": ("dhrd.serve.predict", "batched prediction with an exported classifier (lean or hf)"),
    "experiment": ("dhrd.experiment.cli", "run a grid of methods x seeds x settings and compare them"),
    "serve": ("dhrd.serve.http", "HTTP service for batch classification over an exported classifier"),
    "export": ("dhrd.export.cli", "export the classifier of a training output (lean or Hugging Face format)"),
}


def list_tasks() -> int:
    from dhrd.data.tasks import TASKS

    width = max(map(len, TASKS))
    metric_width = max(len(", ".join(t.metrics)) for t in TASKS.values())
    for name, task in TASKS.items():
        labels = ", ".join(f"{lab}={verb!r}" for lab, verb in zip(task.labels, task.verbalizers))
        print(f"{name:<{width}}  metrics: {', '.join(task.metrics):<{metric_width}}  labels: {labels}")
    return 0


def train(argv: list[str]) -> int:
    """``dhrd train`` ends as ``dhrd/train.py`` does under a launcher (``srun dhrd train``,
    ``torchrun -m dhrd.cli train``): after a multi-process run, through ``exit_process``."""
    from .engine.dist import exit_process
    from .train import train_main

    code, world = train_main(argv)
    if world > 1:
        exit_process(code, world)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dhrd", description="Dual-Head Reasoning Distillation")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("tasks", help="list the tasks with their labels, verbalizers and metrics")
    for name, (_, help_) in DELEGATES.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "tasks":
        return list_tasks()
    if command not in DELEGATES:
        parser.error(f"unknown command {command!r}")
    if command == "train":
        return train(rest)
    from .logs import setup as setup_logging

    setup_logging()  # library messages (warnings, notices) on stderr as "[rank0] ..." (DHRD_LOG_LEVEL)
    try:
        module = importlib.import_module(DELEGATES[command][0])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("dhrd"):
            print(f"dhrd {command}: not available in this version ({e.name} is missing)", file=sys.stderr)
            return 2
        raise
    from .cli_errors import run_main

    return run_main(f"dhrd {command}", module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
