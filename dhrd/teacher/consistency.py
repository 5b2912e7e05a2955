"""Label consistency of a rationale file against the gold labels, the filter that acts
on it, and length statistics.

A teacher that answered differently from the gold label wrote a rationale for the wrong
answer; training the reasoning head on it teaches the wrong reasoning (PaLM's released
sets disagree on ~27% of e-SNLI and ~24% of CQA rows). Policies:
- ``keep``: write every record (the report still counts the disagreements);
- ``drop``: drop the records whose teacher_label disagrees (no teacher label: kept);
- ``strict``: keep only records whose teacher_label agrees.
The ids of dropped records (plus, with ``--include_missing``, examples that have no
rationale) can be written one per line, for ``dhrd rationales generate --ids_file`` to
regenerate them into a new file, which ``dhrd rationales merge --replace`` then joins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..data.errors import DataError
from ..data.pipeline import load_examples
from ..data.rationales import clean_rationale, read_rationales
from ..data.tasks import Task, get_task
from ..fileio import atomic_write_json, atomic_write_lines
from .generation_log import read_log

POLICIES = ("keep", "drop", "strict")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def length_stats(texts: Iterable[str]) -> dict[str, dict[str, float]]:
    """chars and words: count, mean, p50, p90, max."""
    chars, words = [], []
    for text in texts:
        chars.append(len(text))
        words.append(len(text.split()))
    out = {}
    for name, values in (("chars", sorted(chars)), ("words", sorted(words))):
        out[name] = {"n": len(values), "mean": sum(values) / len(values) if values else 0.0,
                     "p50": percentile(values, 50), "p90": percentile(values, 90),
                     "max": float(values[-1]) if values else 0.0}
    return out


@dataclass
class ConsistencyReport:
    examples: int = 0
    rationales: int = 0
    agree: int = 0
    disagree: int = 0
    no_teacher_label: int = 0
    unknown_ids: list[str] = field(default_factory=list)  # rationale ids not in the task file
    missing_ids: list[str] = field(default_factory=list)  # examples without a rationale
    disagree_ids: list[str] = field(default_factory=list)
    unlabeled_ids: list[str] = field(default_factory=list)
    confusion: Counter = field(default_factory=Counter)  # (gold, teacher) -> count
    lengths: dict = field(default_factory=dict)  # of every matched rationale
    kept_lengths: dict = field(default_factory=dict)  # of those the policy keeps

    def agreement(self) -> float:
        labeled = self.agree + self.disagree
        return self.agree / labeled if labeled else 0.0

    def to_dict(self) -> dict:
        return {"examples": self.examples, "rationales": self.rationales, "agree": self.agree,
                "disagree": self.disagree, "no_teacher_label": self.no_teacher_label,
                "agreement_of_labeled": self.agreement(), "unknown_ids": len(self.unknown_ids),
                "missing": len(self.missing_ids),
                "confusion": {f"{g} -> {t}": n for (g, t), n in sorted(self.confusion.items())},
                "lengths": self.lengths, "kept_lengths": self.kept_lengths}

    def format(self) -> str:
        def stats(s):
            return ", ".join(f"{k} mean {v['mean']:.1f} p50 {v['p50']:.0f} p90 {v['p90']:.0f} max {v['max']:.0f}"
                             for k, v in s.items())
        lines = [f"examples {self.examples}, rationales matched {self.rationales} "
                 f"(unknown ids {len(self.unknown_ids)}, examples without one {len(self.missing_ids)})",
                 f"teacher label: agree {self.agree}, disagree {self.disagree}, none {self.no_teacher_label}"
                 + (f" -> agreement {100 * self.agreement():.2f}% of labeled" if self.agree + self.disagree
                    else " (no teacher labels: gold-mode or human rationales)"),
                 f"length (all): {stats(self.lengths)}"]
        if self.kept_lengths:
            lines.append(f"length (kept): {stats(self.kept_lengths)}")
        return "\n".join(lines)


def check(task: Task, examples_path: str, rationales_path: str,
          policy: str = "keep") -> tuple[ConsistencyReport, list[dict]]:
    """The report, and the records the policy keeps (unknown ids are never kept)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}")
    gold = {ex.id: task.labels[ex.label] for ex in load_examples(task, examples_path)}  # a path or hub:<split>
    rows = read_log(rationales_path)
    if not rows:
        raise DataError("no rationales", path=rationales_path)
    report = ConsistencyReport(examples=len(gold))
    seen: dict[str, int] = {}
    kept, all_texts, kept_texts = [], [], []
    for lineno, row in rows:
        rid, label = row["id"], row.get("teacher_label")
        if rid in seen:
            raise DataError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=rationales_path,
                            line=lineno, field="id")
        seen[rid] = lineno
        if not isinstance(row.get("rationale"), str):
            raise DataError("missing or not a string", path=rationales_path, line=lineno, field="rationale")
        if label is not None and label not in task.labels:
            raise DataError(f"unknown label {label!r}; expected one of {', '.join(task.labels)}",
                            path=rationales_path, line=lineno, field="teacher_label")
        if rid not in gold:
            report.unknown_ids.append(rid)
            continue
        report.rationales += 1
        text = clean_rationale(row["rationale"])
        all_texts.append(text)
        if label is None:
            report.no_teacher_label += 1
            report.unlabeled_ids.append(rid)
        else:
            report.confusion[(gold[rid], label)] += 1
            if label == gold[rid]:
                report.agree += 1
            else:
                report.disagree += 1
                report.disagree_ids.append(rid)
        if policy == "keep" or (label == gold[rid]) or (policy == "drop" and label is None):
            kept.append(row)
            kept_texts.append(text)
    report.missing_ids = [i for i in gold if i not in seen]
    report.lengths = length_stats(all_texts)
    if policy != "keep":
        report.kept_lengths = length_stats(kept_texts)
    return report, kept


def regenerate_ids(report: ConsistencyReport, policy: str, include_missing: bool) -> list[str]:
    """Disagreeing ids (whatever the policy), unlabeled ones too under ``strict``."""
    ids = list(report.disagree_ids)
    if policy == "strict":
        ids += report.unlabeled_ids
    if include_missing:
        ids += report.missing_ids
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dhrd rationales check", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--input", required=True, help="the task's JSONL file (gold labels)")
    p.add_argument("--rationales", required=True)
    p.add_argument("--policy", choices=POLICIES, default="keep")
    p.add_argument("--out", help="write the records the policy keeps here")
    p.add_argument("--regenerate_ids", help="write the ids to regenerate here, one per line")
    p.add_argument("--include_missing", action="store_true",
                   help="also list examples that have no rationale at all")
    p.add_argument("--report", help="write the report as JSON here")
    args = p.parse_args(argv)
    task = get_task(args.task)
    for out in (args.out, args.regenerate_ids, args.report):
        if out and os.path.isdir(out):
            raise ValueError(f"{out}: is a directory (give a file path)")
    # first, exactly what training will accept (its reader refuses what this tolerant one
    # skips: a truncated last line, text that is not valid UTF-8): check must not pass a
    # file that the training run then rejects
    read_rationales(args.rationales, task.labels)
    report, kept = check(task, args.input, args.rationales, args.policy)
    print(report.format())
    if args.out:
        atomic_write_lines(args.out, (json.dumps(row, ensure_ascii=False) for row in kept))
        print(f"{args.out}: kept {len(kept)} of {report.rationales} ({args.policy})", file=sys.stderr)
    if args.regenerate_ids:
        ids = regenerate_ids(report, args.policy, args.include_missing)
        atomic_write_lines(args.regenerate_ids, ids)
        print(f"{args.regenerate_ids}: {len(ids)} ids to regenerate", file=sys.stderr)
    if args.report:
        atomic_write_json(args.report, report.to_dict(), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
