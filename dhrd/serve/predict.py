"""``dhrd predict MODEL_DIR --input FILE`` writes ``{"id", "label", "probs"}`` per example
as JSON Lines and, over the examples that have a gold label, the task's metrics.
MODEL_DIR is either export (``dhrd export``, lean or ``--format hf``), loaded by the
loader ``dhrd serve`` uses (served_model.load_model), so the two verbs accept the same
directories. A
multiple-choice model (formulation choice) scores each option of a row alone and adds
the chosen ``option``'s text; ``probs`` are then over the row's options."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..fileio import atomic_write_json, atomic_write_lines
from .served_model import load_model, model_task


def read_examples(task_name: str, path: str):
    """The task's own reader and checks (labels optional); ``-`` is stdin, named
    ``<stdin>`` in errors. Bad rows raise DataError with file, line and field."""
    from ..data.tasks import get_task
    from ..jsonl import iter_lines

    task = get_task(task_name)
    if path != "-":
        return task.read(path, require_labels=False)
    stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes: a bad byte is reported at its line
    return task._examples(iter_lines(stream, "<stdin>"), "<stdin>", False, adapt=None)


def metrics_of(task_name: str, examples, preds) -> dict | None:
    """The task's metrics over the examples that carry a gold label (None if none do)."""
    from ..data.tasks import get_task

    gold = [(p, ex) for p, ex in zip(preds, examples) if ex.label is not None]
    if not gold:
        return None
    scores = get_task(task_name).score([p for p, _ in gold], [ex.label for _, ex in gold],
                                       [ex.group for _, ex in gold])
    return {"labelled": len(gold), **scores}


def prediction_rows(model, examples):
    """(predicted label indices, one output row per example) for either formulation, from
    a loaded model (served_model: LeanModel or HFModel). Texts are the task's rendering,
    which is what the HF export's stored template renders too."""
    from ..data.tasks import get_task

    labels = model.labels
    if model.choice:
        task = get_task(model.task)
        probs = model.predict_choices([task.render_options(ex.fields) for ex in examples])
    else:
        probs = list(model.predict([ex.text for ex in examples]))
    preds = [int(p.argmax()) for p in probs]
    rows = [{"id": ex.id, "label": labels[pred], "probs": dict(zip(labels, p.tolist()))}
            for ex, pred, p in zip(examples, preds, probs)]
    if model.choice:
        for row, ex, pred in zip(rows, examples, preds):
            row["option"] = task.options(ex.fields)[pred].strip()
    return preds, rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhrd predict", description="batched prediction with an exported classifier")
    p.add_argument("model_dir", help="a lean or Hugging Face (--format hf) classifier directory (dhrd export)")
    p.add_argument("--input", default="-", help="task-format JSONL file; - reads stdin")
    p.add_argument("--output", default="-", help="predictions JSONL; - writes stdout")
    p.add_argument("--metrics_out", default=None, help="also write the metrics JSON here")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_batch_tokens", type=int, default=None, help="cap on padded tokens per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="default: the directory's dtype")
    p.add_argument("--int8", default=None, choices=("true", "false"),
                   help="lean directories only; default: the directory's flag")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..data.errors import DataError
    from ..model.backbones import check_device

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or (args.max_batch_tokens is not None and args.max_batch_tokens < 1):
        print("dhrd predict: error: --batch_size and --max_batch_tokens must be >= 1", file=sys.stderr)
        return 2
    if args.output != "-" and (os.path.isdir(args.output)
                               or not os.path.isdir(os.path.dirname(os.path.abspath(args.output)))):
        print(f"dhrd predict: error: --output {args.output}: not a writable file path (a directory, or its "
              "folder does not exist)", file=sys.stderr)
        return 2
    try:  # the input is checked before the (possibly large) model loads
        check_device(args.device)
        examples = read_examples(model_task(args.model_dir), args.input)
        model = load_model(args.model_dir, args.device, args.dtype, args.batch_size,
                           int8=None if args.int8 is None else args.int8 == "true",
                           max_batch_tokens=args.max_batch_tokens)
    except (DataError, OSError, ValueError) as e:
        print(f"dhrd predict: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    preds, rows = prediction_rows(model, examples)
    elapsed = time.perf_counter() - t0
    lines = (json.dumps(row) for row in rows)
    if args.output == "-":
        sys.stdout.writelines(line + "\n" for line in lines)
    else:
        atomic_write_lines(args.output, lines)
    summary = {"examples": len(examples), "seconds": round(elapsed, 4), "qps": round(len(examples) / elapsed, 2)}
    metrics = metrics_of(model.task, examples, preds)
    if metrics is not None:
        summary["metrics"] = metrics
    print(json.dumps(summary), file=sys.stderr)
    if args.metrics_out:
        atomic_write_json(args.metrics_out, summary, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
