"""``dhrd data``: read a task file and its rationales, tokenise them as training would,
and print the data report and packing efficiency: a dry run that catches bad input
before a cluster job does."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .cli_errors import run_main

    return run_main("dhrd data", report, argv)


def report(argv: list[str] | None = None) -> int:
    """The work of ``main``; bad arguments, files or rows raise (``cli_errors`` reports them)."""
    from .config import apply_method, explicit_fields, parse_args
    from .data.packing import best_fit_decreasing, packing_efficiency
    from .data.pipeline import build_training_set, load_examples
    from .data.tasks import check_formulation, get_task
    from .model.backbones import load_backbone, load_tokenizer, resolve_model_path
    from .model.dual_head import add_reasoning_tokens

    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, loss_args, _train_args, rest = parse_args(argv)
    if rest:
        raise ValueError(f"unknown arguments {' '.join(rest)}")
    # the method preset, as training applies it: pooled reads no rationales
    apply_method(loss_args, data_args, explicit_fields(argv))
    if not data_args.train_file:
        raise ValueError("--train_file is required")
    task = get_task(data_args.task)
    check_formulation(task, data_args.formulation)
    examples = load_examples(task, data_args.train_file)  # bad rows are found before the model loads
    path = resolve_model_path(model_args.model or "smollm2")
    tokenizer = load_tokenizer(path, model_args.gguf_file)
    special = add_reasoning_tokens(tokenizer, load_backbone(path, gguf_file=model_args.gguf_file))
    ds, report = build_training_set(task, examples, tokenizer, special, data_args,
                                    with_reasoning=loss_args.alpha > 0, cache_dir=data_args.cache_dir)
    lengths = ds["length"]
    bins = best_fit_decreasing(lengths, data_args.pack_tokens)
    print(report.format())
    unit = "sequences" if data_args.formulation != "choice" else \
        "questions (each packed whole: its options and any LM sequence)"
    print(f"{unit}: {len(lengths)}, mean {sum(lengths) / len(lengths):.1f} tokens, max {max(lengths)}; "
          f"packed into {len(bins)} rows of {data_args.pack_tokens}: "
          f"efficiency {packing_efficiency(lengths, bins, data_args.pack_tokens):.4f}")
    return 0
