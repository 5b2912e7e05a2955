"""The rationale store: read a teacher's JSONL ``{"id", "rationale", "teacher_label"?}``
(or k rationales of one example: ``{"id", "rationales": [...], "teacher_labels"?: [...]}``),
clean it, join it to examples by id and apply the data policies (label consistency,
label-only and shuffled ablations). Every example and every rationale is accounted for
in the DataReport."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..jsonl import read_jsonl
from .errors import DataError
from .report import DataReport

END_MARKER = "[END OF REASONING]"


@dataclass(frozen=True)
class Rationale:
    """One example's rationale (``text``), or its first of k (``texts``, each with its own
    teacher label where the teacher gave one)."""

    id: str
    text: str
    teacher_label: str | None
    where: str  # "file:line", for reports
    texts: tuple[str, ...] = ()  # all k rationales (default: just ``text``)
    teacher_labels: tuple[str | None, ...] = ()

    def pairs(self) -> list[tuple[str, str | None]]:
        """(text, teacher label) of each of its rationales."""
        if not self.texts:
            return [(self.text, self.teacher_label)]
        labels = self.teacher_labels or (self.teacher_label,) * len(self.texts)
        return list(zip(self.texts, labels))


@dataclass(frozen=True)
class TrainItem:
    """An example with the rationale it trains on (None: classifier and answer only) and,
    with k rationales per example, the k - 1 others (training takes a different one each
    epoch: data/order.py)."""

    example: object  # dhrd.data.tasks.Example
    rationale: str | None
    alternatives: tuple[str, ...] = ()


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
        if "id" not in row:
            raise DataError("missing", path=path, line=lineno, field="id")
        rid = row["id"]
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str):
            raise DataError(f"expected a string, got {type(rid).__name__}", path=path, line=lineno, field="id")
        if rid in out:
            raise DataError(f"duplicate id {rid!r} (first at {out[rid].where})", path=path, line=lineno,
                            field="id")
        where = f"{path}:{lineno}"
        pairs = _row_rationales(row, labels, path, lineno)
        kept = [(clean_rationale(t), lab) for t, lab in pairs]
        for i, (t, _) in enumerate(kept):
            if not t:
                report.skip("rationale_empty", where if len(kept) == 1 else f"{where} (rationales[{i}])")
        kept = [(t, lab) for t, lab in kept if t]
        if not kept:
            continue
        texts, tlabels = zip(*kept)
        several = "rationales" in row  # a list row keeps its texts, even a list of one
        out[rid] = Rationale(rid, texts[0], tlabels[0], where, texts=texts if several else (),
                             teacher_labels=tlabels if several else ())
    if n_lines == 0:
        raise DataError("no rationales (empty file)", path=path)
    report.count("rationales_read", len(out))
    return out


def _check_label(value, labels, path, lineno, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"expected a label name, got {value!r}", path=path, line=lineno, field=field_name)
    if labels is not None and value not in labels:
        raise DataError(f"unknown label {value!r}; expected one of {', '.join(labels)}",
                        path=path, line=lineno, field=field_name)
    return value


def _row_rationales(row: dict, labels, path, lineno) -> list[tuple[str, str | None]]:
    """(text, teacher label) of a row's one ``rationale`` or k ``rationales``, checked."""
    if "rationale" not in row and "rationales" not in row:
        raise DataError("missing (or 'rationales': a list of k strings)", path=path, line=lineno, field="rationale")
    if "rationale" in row and "rationales" in row:
        raise DataError("give one of 'rationale' (a string) or 'rationales' (a list of strings), not both",
                        path=path, line=lineno, field="rationales")
    if "rationale" in row:
        text = row["rationale"]
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", path=path, line=lineno,
                            field="rationale")
        return [(text, _check_label(row.get("teacher_label"), labels, path, lineno, "teacher_label"))]
    texts = row["rationales"]
    if not isinstance(texts, list) or not texts:
        raise DataError("expected a non-empty list of strings", path=path, line=lineno, field="rationales")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"expected a string, got {type(t).__name__}", path=path, line=lineno,
                            field=f"rationales[{i}]")
    tl = row.get("teacher_labels")
    if tl is None:
        one = _check_label(row.get("teacher_label"), labels, path, lineno, "teacher_label")
        return [(t, one) for t in texts]
    if not isinstance(tl, list) or len(tl) != len(texts):
        raise DataError(f"expected a list as long as rationales ({len(texts)})", path=path, line=lineno,
                        field="teacher_labels")
    return [(t, _check_label(lab, labels, path, lineno, f"teacher_labels[{i}]"))
            for i, (t, lab) in enumerate(zip(texts, tl))]


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
                      *, mode: str = "teacher", consistency: str = "keep", seed: int = 0, per_example: int = 0,
                      report: DataReport | None = None) -> list[TrainItem]:
    """Join rationales to examples by id and apply the policies:

    mode: ``teacher`` (DHRD), ``none`` (label-only: no rationale anywhere), ``shuffled``
    (ablation: rationales permuted among the examples that have one, seeded).
    consistency: where teacher_label disagrees with the gold label, ``keep`` it, ``drop``
    the rationale (the example still trains the classifier), or ``drop_example``. With k
    rationales an example, each is judged by its own teacher label; ``drop_example`` drops
    an example none of whose rationales agree.
    per_example: use at most this many of an example's rationales (0: all it has).
    """
    report = report if report is not None else DataReport()
    rationales = rationales or {}
    ids = {ex.id for ex in examples}
    for rid, r in rationales.items():
        if rid not in ids:
            report.skip("rationale_unknown_id", r.where)

    items: list[TrainItem] = []
    tally = [0, 0]  # teacher labels checked, agreeing
    for ex in examples:
        r = rationales.get(ex.id) if mode != "none" else None
        texts = _consistent_texts(ex, r, labels, consistency, per_example, tally, report)
        if texts is None:
            continue
        if r is None and mode != "none" and ex.id not in rationales:
            report.count("examples_without_rationale")
        items.append(TrainItem(ex, texts[0] if texts else None, tuple(texts[1:])))

    check_alignment(tally[0], tally[1], len(labels), rationales)
    if mode == "shuffled":
        have = [i for i, it in enumerate(items) if it.rationale is not None]
        sets = [(items[i].rationale, items[i].alternatives) for i in have]
        random.Random(seed).shuffle(sets)
        for i, (text, alts) in zip(have, sets):
            items[i] = TrainItem(items[i].example, text, alts)
        report.count("rationales_shuffled", len(have))
    report.count("examples_used", len(items))
    report.count("examples_with_rationale", sum(it.rationale is not None for it in items))
    if any(it.alternatives for it in items):
        report.count("examples_with_several_rationales", sum(bool(it.alternatives) for it in items))
        report.count("rationales_used", sum(1 + len(it.alternatives) for it in items if it.rationale is not None))
    return items


def _consistent_texts(ex, r: Rationale | None, labels, consistency: str, per_example: int, tally: list,
                      report: DataReport) -> list[str] | None:
    """The rationale texts ``ex`` trains on after the consistency policy ([] for none),
    or None when the example itself is dropped."""
    if r is None:
        return []
    pairs = r.pairs()[:per_example] if per_example else r.pairs()
    kept = []
    for text, teacher in pairs:
        if teacher is None or ex.label is None:
            kept.append(text)
            continue
        tally[0] += 1
        agrees = teacher == labels[ex.label]
        tally[1] += agrees
        if agrees or consistency == "keep":
            kept.append(text)
            if not agrees:
                report.count("label_disagree_kept")
        elif consistency == "drop":
            report.skip("label_disagree_rationale_dropped", r.where)
    if not kept and consistency == "drop_example" and pairs:
        report.skip("label_disagree_example_dropped", r.where)
        return None
    if consistency == "drop_example" and len(kept) < len(pairs):
        report.count("label_disagree_rationale_dropped_example_kept", len(pairs) - len(kept))
    return kept
