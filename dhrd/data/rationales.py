"""The rationale store: read a teacher's JSONL ``{"id", "rationale", "teacher_label"?}``,
clean it, join it to examples by id and apply the data policies (label consistency,
label-only and shuffled ablations). Every example and every rationale is accounted for
in the DataReport."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .errors import DataError
from .jsonl import read_jsonl
from .report import DataReport

END_MARKER = "[END OF REASONING]"


@dataclass(frozen=True)
class Rationale:
    id: str
    text: str
    teacher_label: str | None
    where: str  # "file:line", for reports


@dataclass(frozen=True)
class TrainItem:
    """An example with the rationale it trains on (None: classifier and answer only)."""

    example: object  # dhrd.data.tasks.Example
    rationale: str | None


def clean_rationale(text: str) -> str:
    """Cut at the end marker, trim, and squeeze runs of blank lines."""
    cut = text.find(END_MARKER)
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip()


def read_rationales(path, labels: tuple[str, ...] | None = None,
                    report: DataReport | None = None) -> dict[str, Rationale]:
    """Read a rationale file. Malformed lines, missing or mistyped fields, unknown
    teacher labels and duplicate ids raise DataError naming file, line and field;
    rationales that are empty after cleaning are counted as skipped."""
    report = report if report is not None else DataReport()
    out: dict[str, Rationale] = {}
    n_lines = 0
    for lineno, row in read_jsonl(path):
        n_lines += 1
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=lineno)
        for key in ("id", "rationale"):
            if key not in row:
                raise DataError("missing", path=path, line=lineno, field=key)
        rid, text = row["id"], row["rationale"]
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str):
            raise DataError(f"expected a string, got {type(rid).__name__}", path=path, line=lineno, field="id")
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", path=path, line=lineno,
                            field="rationale")
        teacher_label = row.get("teacher_label")
        if teacher_label is not None:
            if not isinstance(teacher_label, str):
                raise DataError(f"expected a label name, got {teacher_label!r}", path=path, line=lineno,
                                field="teacher_label")
            if labels is not None and teacher_label not in labels:
                raise DataError(f"unknown label {teacher_label!r}; expected one of {', '.join(labels)}",
                                path=path, line=lineno, field="teacher_label")
        if rid in out:
            raise DataError(f"duplicate id {rid!r} (first at {out[rid].where})", path=path, line=lineno,
                            field="id")
        where = f"{path}:{lineno}"
        text = clean_rationale(text)
        if not text:
            report.skip("rationale_empty", where)
            continue
        out[rid] = Rationale(rid, text, teacher_label, where)
    if n_lines == 0:
        raise DataError("no rationales (empty file)", path=path)
    report.count("rationales_read", len(out))
    return out


ALIGNMENT_MIN_ROWS = 100


def check_alignment(checked: int, agreed: int, n_labels: int, rationales: dict) -> None:
    """Refuse rationales whose teacher labels agree with the gold labels no better than
    chance: the ids almost certainly point at other examples (a subset file renumbered
    rows whose ids are row numbers, a rationale file of another split), and training on
    them is the shuffled-rationale ablation, silently."""
    if checked < ALIGNMENT_MIN_ROWS or agreed / checked > 1.0 / n_labels + 0.05:
        return
    where = next(iter(rationales.values())).where.rsplit(":", 1)[0] if rationales else "the rationale file"
    raise ValueError(
        f"{where}: teacher_label agrees with the gold label on only {agreed} of {checked} examples "
        f"({100 * agreed / checked:.1f}%, chance is {100 / n_labels:.1f}%): the rationale ids do not match "
        "these examples. Ids are each row's id field (or its row number where the task has none, e.g. "
        "e-SNLI: keep an 'idx' field holding the original row number when you take a subset).")


def attach_rationales(examples, rationales: dict[str, Rationale] | None, labels: tuple[str, ...],
                      *, mode: str = "teacher", consistency: str = "keep", seed: int = 0,
                      report: DataReport | None = None) -> list[TrainItem]:
    """Join rationales to examples by id and apply the policies:

    mode: ``teacher`` (DHRD), ``none`` (label-only: no rationale anywhere), ``shuffled``
    (ablation: rationales permuted among the examples that have one, seeded).
    consistency: where teacher_label disagrees with the gold label, ``keep`` it, ``drop``
    the rationale (the example still trains the classifier), or ``drop_example``.
    """
    report = report if report is not None else DataReport()
    rationales = rationales or {}
    ids = {ex.id for ex in examples}
    for rid, r in rationales.items():
        if rid not in ids:
            report.skip("rationale_unknown_id", r.where)

    items: list[TrainItem] = []
    checked = agreed = 0
    for ex in examples:
        r = rationales.get(ex.id) if mode != "none" else None
        if r is not None and r.teacher_label is not None and ex.label is not None:
            checked += 1
            agreed += r.teacher_label == labels[ex.label]
        if r is not None and r.teacher_label is not None and ex.label is not None \
                and r.teacher_label != labels[ex.label]:
            if consistency == "drop_example":
                report.skip("label_disagree_example_dropped", r.where)
                continue
            if consistency == "drop":
                report.skip("label_disagree_rationale_dropped", r.where)
                r = None
            else:
                report.count("label_disagree_kept")
        if r is None and mode != "none" and ex.id not in rationales:
            report.count("examples_without_rationale")
        items.append(TrainItem(ex, r.text if r is not None else None))

    check_alignment(checked, agreed, len(labels), rationales)
    if mode == "shuffled":
        have = [i for i, it in enumerate(items) if it.rationale is not None]
        texts = [items[i].rationale for i in have]
        random.Random(seed).shuffle(texts)
        for i, text in zip(have, texts):
            items[i] = TrainItem(items[i].example, text)
        report.count("rationales_shuffled", len(have))
    report.count("examples_used", len(items))
    report.count("examples_with_rationale", sum(it.rationale is not None for it in items))
    return items
