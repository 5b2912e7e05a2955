"""Import released rationale sets into the rationale JSONL format: the PaLM 540B
chain-of-thought continuations released with "Distilling Step-by-Step" (Hsieh et al.
2023) and the human explanations that ship with the same rows (e-SNLI, CoS-E, ANLI).

A PaLM set is ``<root>/<task>/<task>_<split>.json`` (the example rows, read by the task
reader, so ids are the reader's) plus ``<root>/<task>/llm/<split>_CoT_<k>.json``: JSON
arrays of raw continuations, aligned by position with the rows when concatenated in k
order. (Files usually hold 1000 each, but not always: e-SNLI's hold 5500 and 4342, so
the offsets come from the actual lengths and only the total must match.)

A continuation runs on past its answer into invented further examples: it is cut at the
first blank line; the teacher's answer after the last "So the answer is" / "Answer:" is
parsed into ``teacher_label`` and cut from the rationale (the training sequence adds
the answer itself after <ANS>).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..data.errors import DataError
from ..data.report import DataReport
from ..data.tasks import Task, get_task, read_examples
from ..fileio import atomic_write_jsonl, loads_json
from .prompts import match_label, split_answer


@dataclass(frozen=True)
class ReleasedSet:
    """Where a task's released rationales live under the palm-cot root."""

    examples: str  # "{root}"-relative, with {split}
    llm_dir: str
    human_field: str | None  # the human explanation in each row
    human_name: str  # teacher name for human explanations


RELEASED = {
    "cqa": ReleasedSet("cqa/cqa_{split}.json", "cqa/llm", "abstractive_explanation", "human:cos-e"),
    "esnli": ReleasedSet("esnli/esnli_{split}.json", "esnli/llm", "explanation_1", "human:e-snli"),
    "anli1": ReleasedSet("anli1/anli1_{split}.json", "anli1/llm", "reason", "human:anli"),
}
PALM_TEACHER = "palm-540b"
PALM_VERSION = "dss-palm-cot"  # the few-shot CoT prompts of the Distilling Step-by-Step release
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def cot_files(llm_dir: str, split: str) -> list[str]:
    """``<split>_CoT_<k>.json`` for k = 0, 1, ... in numeric order; a gap is an error."""
    pattern = re.compile(rf"^{re.escape(split)}_CoT_(\d+)\.json$")
    found = {}
    for name in os.listdir(llm_dir) if os.path.isdir(llm_dir) else ():
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = os.path.join(llm_dir, name)
    if not found:
        raise DataError(f"no {split}_CoT_<k>.json files", path=llm_dir)
    gaps = sorted(set(range(max(found) + 1)) - set(found))
    if gaps:
        raise DataError(f"missing {split}_CoT_<k>.json for k = {gaps}: rows would misalign", path=llm_dir)
    return [found[k] for k in sorted(found)]


def load_continuations(files: Sequence[str]) -> list[list[str]]:
    """Each file's array of continuations, checked to be strings."""
    out: list[list[str]] = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            try:
                data = loads_json(f.read())
            except ValueError as e:  # also not UTF-8, or nested past what the parser recurses into
                raise DataError(f"malformed JSON ({e})", path=path) from None
        if not isinstance(data, list):
            raise DataError(f"expected a JSON array of strings, got {type(data).__name__}", path=path)
        for i, text in enumerate(data):
            if not isinstance(text, str):
                raise DataError(f"expected a string, got {type(text).__name__}", path=path, field=f"[{i}]")
        out.append(data)
    return out


def parse_continuation(task: Task, text: str, fields=None) -> tuple[str, int | None, str | None]:
    """(rationale, label index or None, raw answer or None) of one raw continuation."""
    own = _BLANK_LINE.split(text.strip("\n"), maxsplit=1)[0]
    rationale, answer = split_answer(own)
    return rationale, match_label(task, answer, fields), answer


@dataclass
class ImportResult:
    records: list[dict] = field(default_factory=list)
    report: DataReport = field(default_factory=DataReport)
    agree: int = 0
    disagree: int = 0
    unparsed: int = 0
    confusion: Counter = field(default_factory=Counter)  # (gold, teacher or None) -> count

    @property
    def total(self) -> int:
        return self.agree + self.disagree + self.unparsed

    def agreement(self) -> dict[str, float]:
        parsed = self.agree + self.disagree
        return {"rows": self.total, "agree": self.agree, "disagree": self.disagree, "unparsed": self.unparsed,
                "agreement": self.agree / self.total if self.total else 0.0,
                "agreement_of_parsed": self.agree / parsed if parsed else 0.0}


def import_palm_cot(task: Task | str, examples_path: str, llm_dir: str, split: str) -> ImportResult:
    """Align the continuations with the task file's examples and parse each."""
    task = get_task(task) if isinstance(task, str) else task
    examples = read_examples(task, examples_path)
    files = cot_files(llm_dir, split)
    per_file = load_continuations(files)
    texts = [text for chunk in per_file for text in chunk]
    if len(texts) != len(examples):
        counts = ", ".join(f"{os.path.basename(p)}: {len(c)}" for p, c in zip(files, per_file))
        raise DataError(f"{len(texts)} teacher continuations in {len(files)} file(s) ({counts}) but "
                        f"{len(examples)} examples in {examples_path}: they must align row by row",
                        path=llm_dir)
    result = ImportResult()
    for k, (ex, text) in enumerate(zip(examples, texts)):
        rationale, label, answer = parse_continuation(task, text, ex.fields)
        gold = task.labels[ex.label]
        teacher = task.labels[label] if label is not None else None
        result.confusion[(gold, teacher)] += 1
        if teacher is None:
            result.unparsed += 1
            _note(result.report, "teacher_label_unparsed", f"{ex.id} ({answer!r})")
        elif teacher == gold:
            result.agree += 1
        else:
            result.disagree += 1
        if not rationale:
            result.report.skip("rationale_empty", f"{ex.id} (continuation {k})")
            continue
        result.records.append({"id": ex.id, "rationale": rationale, "teacher_label": teacher,
                               "teacher": PALM_TEACHER, "prompt_version": PALM_VERSION,
                               "gold_label": gold, "raw_answer": answer})
    result.report.count("rows", len(examples))
    result.report.count("records", len(result.records))
    return result


def _note(report: DataReport, reason: str, where: str) -> None:
    """Count something kept but worth a look, with a few samples (skip() is for drops)."""
    report.count(reason)
    kept = report.samples.setdefault(reason, [])
    if len(kept) < report.max_samples:
        kept.append(where)


def import_human(task: Task | str, examples_path: str, field_name: str | Sequence[str], teacher: str) -> ImportResult:
    """Human explanations from a field of each row (several fields: a ``rationales`` list of
    the non-empty ones, k per example); teacher_label is null (they explain the gold label,
    they do not predict one)."""
    task = get_task(task) if isinstance(task, str) else task
    names = [field_name] if isinstance(field_name, str) else list(field_name)
    result = ImportResult()
    examples = read_examples(task, examples_path)
    for ex in examples:
        texts = []
        for name in names:
            text = ex.fields.get(name)
            if not isinstance(text, str) or not text.strip():
                result.report.skip(f"{name}_missing_or_empty", ex.id)
                continue
            texts.append(text.strip())
        if not texts:
            continue
        body = {"rationale": texts[0]} if len(names) == 1 else {"rationales": texts}
        result.records.append({"id": ex.id, **body, "teacher_label": None,
                               "teacher": teacher, "prompt_version": "human:" + "+".join(names),
                               "gold_label": task.labels[ex.label]})
    result.report.count("rows", len(examples))
    result.report.count("records", len(result.records))
    return result


def write_records(records: Sequence[dict], out: str) -> None:
    """Whole file at once (temporary file, then rename): an import is not resumable, it is
    just rerun."""
    atomic_write_jsonl(out, records)


def format_agreement(task: str, result: ImportResult) -> str:
    a = result.agreement()
    return (f"{task}: {a['agree']}/{a['rows']} rows agree with the gold label = {100 * a['agreement']:.2f}% "
            f"(of parsed: {100 * a['agreement_of_parsed']:.2f}%; disagree {a['disagree']}, "
            f"unparsed {a['unparsed']})")


def format_confusion(task: Task, result: ImportResult) -> str:
    cols = list(task.labels) + [None]
    head = "gold \\ teacher".ljust(16) + "".join(f"{str(c):>15}" for c in cols)
    rows = [head] + [gold.ljust(16) + "".join(f"{result.confusion[(gold, c)]:>15}" for c in cols)
                     for gold in task.labels]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dhrd rationales import", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(RELEASED))
    p.add_argument("--root", help="the palm-cot directory (paths below default from it)")
    p.add_argument("--split", default="train")
    p.add_argument("--examples", help="the task's JSONL rows (default <root>/<task>/<task>_<split>.json)")
    p.add_argument("--llm_dir", help="dir of <split>_CoT_<k>.json (default <root>/<task>/llm)")
    p.add_argument("--source", choices=("cot", "human"), default="cot",
                   help="PaLM chain-of-thought, or the rows' human explanations")
    p.add_argument("--fields", help="--source human: comma-separated row fields to import (several: k "
                   "rationales per example), default the task's explanation field")
    p.add_argument("--out", help="rationale JSONL to write (omit with --report to only measure)")
    p.add_argument("--report", action="store_true", help="print label agreement and the confusion table")
    args = p.parse_args(argv)
    released = RELEASED[args.task]
    if not (args.examples or args.root) or (args.source == "cot" and not (args.llm_dir or args.root)):
        p.error("give --root, or --examples (and --llm_dir for --source cot)")
    if not args.out and not args.report:
        p.error("nothing to do: give --out and/or --report")
    examples = args.examples or os.path.join(args.root, released.examples.format(split=args.split))
    task = get_task(args.task)
    if args.source == "cot":
        result = import_palm_cot(task, examples, args.llm_dir or os.path.join(args.root, released.llm_dir),
                                 args.split)
    else:
        fields = args.fields.split(",") if args.fields else released.human_field
        result = import_human(task, examples, fields, released.human_name)
    if args.out:
        write_records(result.records, args.out)
        print(f"{args.out}: {len(result.records)} records", file=sys.stderr)
    print(result.report.format(), file=sys.stderr)
    if args.report and args.source == "cot":
        print(format_agreement(args.task, result))
        print(format_confusion(task, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
