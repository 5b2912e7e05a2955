"""The task registry: for each task, how to read its rows, render the classifier input x,
map the gold label to an index and score predictions.

Local files are JSON Lines in the original release format (SuperGLUE jsonl, the palm-cot
rows). Hub rows (``datasets.load_dataset``) are first adapted to that local format, so both
go through the same parsing and the same checks. Every bad input raises DataError naming
the file, the 1-based line and the dotted field.

Label indices follow the hub's integer labels, so hub labels need only a lookup."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..jsonl import read_jsonl
from . import metrics
from .errors import DataError


@dataclass(frozen=True)
class Example:
    id: str  # unique per file; the join key for rationale files
    text: str  # rendered task input x (what the classifier pools over)
    label: int | None  # index into task.labels; None only when read with require_labels=False
    group: str | None = None  # MultiRC: the question id (for EM); else None
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the row, for teacher prompts


# ---------------------------------------------------------------------------------------
# Field access: each failure names the dotted field, e.g. 'passage.questions[2].answers[0]'.

_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in an error message's words ("an array", "null")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _join(at: str, name: str | None) -> str | None:
    return f"{at}.{name}" if at and name else (name or at or None)


def check(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    """``value`` if it has one of ``types``; a JSON boolean is not an integer here."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(_JSON_TYPES[t] for t in types)
        raise DataError(f"expected {expected}, got {json_kind(value)}", field=name)
    return value


def need(obj: Mapping, key: str, types: type | tuple[type, ...] = str, at: str = "") -> Any:
    """obj[key], present and typed; ``at`` is the dotted path of ``obj`` for the message."""
    name = _join(at, key)
    if key not in obj:
        raise DataError("missing", field=name)
    return check(obj[key], types, name)


def need_text(obj: Mapping, key: str, at: str = "") -> str:
    """A required string field, stripped (x must not carry stray whitespace); empty after
    stripping is an error: the classifier would pool over a template with a hole."""
    text = need(obj, key, str, at).strip()
    if not text:
        raise DataError("empty (only whitespace)", field=_join(at, key))
    return text


# ---------------------------------------------------------------------------------------
# The task.

Row = dict[str, Any]
# One example's worth of a row: (id, group, fields, dotted path of fields in the row).
Unit = tuple[str, "str | None", Row, str]


@dataclass(frozen=True)
class Task:
    name: str  # registry key, lower case
    labels: tuple[str, ...]  # canonical label names (teacher_label in rationale files uses these)
    verbalizers: tuple[str, ...]  # answer text y per label, learned by the LM head after <ANS>
    description: str  # one line: what the task asks (for teacher prompts)
    metrics: tuple[str, ...]  # what score() returns; the first selects the model
    hub: tuple[str, str | None] | None  # (name, config) for datasets.load_dataset
    template: Callable[[Row], str] = field(repr=False)  # x from a row (or MultiRC answer row)
    # The gold value of each label as the local file writes it, by label index; a function
    # of the row where the options live in the row (CQA's answer is a choice's text).
    label_values: tuple | Callable[[Row], Sequence] = field(repr=False)
    label_key: str = "label"
    # None: the id is the row's "idx" where it has one (a carved subset keeps the ids of the
    # file it came from, so that file's rationales still match), else the 0-based row
    # number, blank lines not counted
    id_key: str | None = "idx"
    units: Callable[[Row], Iterator[Unit]] | None = field(default=None, repr=False)  # rows holding many examples
    from_hub: Callable[[Row], Row] | None = field(default=None, repr=False)  # None: same fields, int label
    hub_split: Callable[[str], str] = field(default=lambda split: split, repr=False)
    # Multiple-choice tasks (--formulation choice): the text of each answer option, in
    # label order, and the input [question, option] the choice head scores for one option.
    options: Callable[[Row], list[str]] | None = field(default=None, repr=False)
    choice_template: Callable[[Row, str], str] | None = field(default=None, repr=False)
    # The raw fields a row of the local format gives ``render``, name -> type (a dict: an
    # object of such fields): dhrd serve's row schema, shown in its OpenAPI document. The
    # template still checks them, as it checks every row read from a file, and checks the
    # rest (only whitespace, copa's "cause" or "effect"); tests/data/test_tasks.py keeps the
    # two in step.
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def render(self, row: Row) -> str:
        """The classifier input x for one row of the local format (MultiRC: one answer row,
        as in Example.fields). Plain text, last line names the answer options."""
        return self.template(row)

    @property
    def has_options(self) -> bool:
        return self.options is not None and self.choice_template is not None

    def render_options(self, row: Row) -> list[str]:
        """One input per answer option, ``[question, option]``, in label order: what the
        choice head scores (--formulation choice)."""
        if not self.has_options:
            raise ValueError(choice_refusal(self.name))
        return [self.choice_template(row, option.strip()) for option in self.options(row)]

    def label_of(self, row: Row) -> int:
        value = row.get(self.label_key)
        if value is None:
            raise DataError("missing (read with require_labels=False for unlabeled data)", field=self.label_key)
        values = self.label_values(row) if callable(self.label_values) else self.label_values
        for i, v in enumerate(values):
            if type(v) is type(value) and v == value:  # strict: JSON true is not the label 1
                return i
        expected = ", ".join(json.dumps(v) for v in values)
        kind = "" if any(type(v) is type(value) for v in values) else f" ({json_kind(value)})"
        raise DataError(f"unknown label {json.dumps(value)}{kind}; expected one of {expected}",
                        field=self.label_key)

    def read(self, path: str | os.PathLike, *, require_labels: bool = True) -> list[Example]:
        """Read a local JSON Lines file, streaming it; blank lines are skipped."""
        return self._examples(read_jsonl(path), path, require_labels, adapt=None)

    def load_hub(self, split: str, *, require_labels: bool = True) -> list[Example]:
        """Load a split with ``datasets.load_dataset``; rows are adapted to the local format,
        hub labels of -1 (unlabeled test splits) become a missing label."""
        if self.hub is None:
            raise ValueError(f"task {self.name!r} has no hub dataset")
        import datasets  # slow to import; only needed here

        name, config = self.hub
        split = self.hub_split(split)
        source = f"{name}{'/' + config if config else ''}[{split}]"
        try:
            rows = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # noqa: BLE001 - offline, unknown split, hub errors: all end the same way
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(f"hub dataset {source} could not be loaded ({type(e).__name__}: {first}); "
                             f"without network or hub cache, give a local JSONL file of the task "
                             f"instead of hub:{split}") from None
        return self._examples(enumerate(map(dict, rows), 1), source, require_labels,
                              adapt=self.from_hub or (lambda row: _hub_label(row, self.label_values)))

    def score(self, preds: Sequence[int], labels: Sequence[int],
              groups: Sequence[str | None] | None = None) -> dict[str, float]:
        return {m: _SCORERS[m](self, preds, labels, groups) for m in self.metrics}

    def _examples(self, rows: Iterable[tuple[int, Any]], source, require_labels: bool,
                  adapt: Callable[[Row], Row] | None) -> list[Example]:
        out: list[Example] = []
        first_line: dict[str, int] = {}
        for position, (lineno, row) in enumerate(rows):
            try:
                if not isinstance(row, dict):
                    raise DataError(f"expected a JSON object, got {json_kind(row)}")
                if adapt is not None:
                    row = adapt(row)
                for ex_id, group, fields, at in self._units(row, position):
                    if ex_id in first_line:
                        raise DataError(f"duplicate id {ex_id!r} (first on line {first_line[ex_id]})",
                                        field=_join(at, self.id_key))
                    first_line[ex_id] = lineno
                    try:
                        unlabeled = fields.get(self.label_key) is None and not require_labels
                        label = None if unlabeled else self.label_of(fields)
                        out.append(Example(ex_id, self.render(fields), label, group, fields))
                    except DataError as e:
                        raise DataError(e.reason, field=_join(at, e.field)) from None
            except DataError as e:
                if e.path is not None:
                    raise
                raise DataError(e.reason, path=source, line=lineno, field=e.field) from None
        if not out:
            raise DataError("no examples", path=source)
        return out

    def _units(self, row: Row, position: int) -> Iterator[Unit]:
        if self.units is not None:
            yield from self.units(row)
        elif self.id_key is None:
            ex_id = need(row, "idx", (int, str)) if "idx" in row else position
            yield str(ex_id), None, row, ""
        else:
            yield str(need(row, self.id_key, (int, str))), None, row, ""


def _hub_label(row: Row, values: Sequence) -> Row:
    """Hub rows carry the label index (-1: unlabeled); local rows carry the label value.
    An out-of-range index is kept as is, for label_of to reject."""
    row = dict(row)
    label = row.pop("label", None)
    if isinstance(label, int) and 0 <= label < len(values):
        row["label"] = values[label]
    elif label not in (None, -1):
        row["label"] = label
    return row


_SCORERS: dict[str, Callable[[Task, Sequence[int], Sequence[int], Any], float]] = {
    "accuracy": lambda t, p, y, g: metrics.accuracy(p, y),
    "macro_f1": lambda t, p, y, g: metrics.macro_f1(p, y, len(t.labels)),
    "f1a": lambda t, p, y, g: metrics.binary_f1(p, y, positive=1),
    "em": lambda t, p, y, g: metrics.exact_match_by_group(p, y, _needs_groups(t, g)),
}


def _needs_groups(task: Task, groups):
    if groups is None:
        raise ValueError(f"task {task.name!r} scores exact match per group: pass groups (Example.group)")
    return groups


# ---------------------------------------------------------------------------------------
# The tasks. Templates are short: the classifier pools at the last token of x.

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def texts(*names: str) -> dict[str, type]:
    """``fields`` of a task whose row is flat text fields."""
    return dict.fromkeys(names, str)


BOOL = (False, True)
YES_NO = ("no", "yes")  # verbalizers for labels ("false", "true")
SUPERGLUE = "aps/super_glue"


def _boolq(r: Row) -> str:
    return (f"Passage: {need_text(r, 'passage')}\nQuestion: {need_text(r, 'question').rstrip('?')}?\n"
            "Answer yes or no.")


register(Task("boolq", ("false", "true"), YES_NO, "Answer a yes/no question about a passage.",
              ("accuracy",), (SUPERGLUE, "boolq"), _boolq, BOOL, fields=texts("passage", "question")))


def _nli3(options: str) -> Callable[[Row], str]:
    def template(r: Row) -> str:
        return (f"Premise: {need_text(r, 'premise')}\nHypothesis: {need_text(r, 'hypothesis')}\n"
                f"Does the premise entail or contradict the hypothesis, or neither? Answer {options}.")
    return template


NLI_DESCRIPTION = "Decide whether the premise entails, contradicts, or is neutral towards the hypothesis."
CB_LABELS = ("entailment", "contradiction", "neutral")
register(Task("cb", CB_LABELS, CB_LABELS, NLI_DESCRIPTION,
              ("macro_f1", "accuracy"), (SUPERGLUE, "cb"), _nli3("entailment, contradiction or neutral"),
              CB_LABELS, fields=texts("premise", "hypothesis")))


def _copa(r: Row) -> str:
    question = need(r, "question")
    if question not in ("cause", "effect"):
        raise DataError(f"expected \"cause\" or \"effect\", got {json.dumps(question)}", field="question")
    return (f"Premise: {need_text(r, 'premise')}\n"
            f"Option 1: {need_text(r, 'choice1')}\nOption 2: {need_text(r, 'choice2')}\n"
            f"Which option is more plausibly the {question}? Answer 1 or 2.")


COPA_ASKS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def _copa_options(r: Row) -> list[str]:
    return [need_text(r, "choice1"), need_text(r, "choice2")]


def _copa_choice(r: Row, option: str) -> str:
    _copa(r)  # the same field checks as the classify input
    return f"Premise: {need_text(r, 'premise')}\n{COPA_ASKS[r['question']]}\nAnswer: {option}"


register(Task("copa", ("choice1", "choice2"), ("1", "2"),
              "Pick the more plausible cause or effect of the premise.",
              ("accuracy",), (SUPERGLUE, "copa"), _copa, (0, 1),
              options=_copa_options, choice_template=_copa_choice,
              fields=texts("premise", "choice1", "choice2", "question")))


def _multirc(r: Row) -> str:
    return (f"Passage: {need_text(r, 'passage')}\nQuestion: {need_text(r, 'question')}\n"
            f"Candidate answer: {need_text(r, 'answer')}\nIs the candidate answer correct? Answer yes or no.")


def _multirc_units(row: Row) -> Iterator[Unit]:
    """One passage line -> one example per answer option, grouped by question for EM. The
    fields are the flat answer row {passage, question, answer, label?} that render takes."""
    pid = need(row, "idx", (int, str))
    passage = need(row, "passage", dict)
    body = need_text(passage, "text", "passage")
    for i, q in enumerate(need(passage, "questions", list, "passage")):
        qat = f"passage.questions[{i}]"
        check(q, dict, qat)
        question, qid = need_text(q, "question", qat), need(q, "idx", (int, str), qat)
        for j, a in enumerate(need(q, "answers", list, qat)):
            aat = f"{qat}.answers[{j}]"
            check(a, dict, aat)
            fields = {"passage": body, "question": question, "answer": need_text(a, "text", aat)}
            if "label" in a:
                fields["label"] = a["label"]
            yield f"{pid}-{qid}-{need(a, 'idx', (int, str), aat)}", f"{pid}-{qid}", fields, aat


def _multirc_hub(r: Row) -> Row:
    """Hub rows are already flat (one per answer): nest each as a one-answer passage."""
    ids = r["idx"]
    answer = {"text": r["answer"], "idx": ids["answer"]}
    if r.get("label", -1) != -1:
        answer["label"] = r["label"]
    question = {"question": r["question"], "idx": ids["question"], "answers": [answer]}
    return {"idx": ids["paragraph"], "passage": {"text": r["paragraph"], "questions": [question]}}


register(Task("multirc", ("false", "true"), YES_NO,
              "Decide whether a candidate answer to a question about a passage is correct.",
              ("f1a", "em"), (SUPERGLUE, "multirc"), _multirc, (0, 1),
              units=_multirc_units, from_hub=_multirc_hub, fields=texts("passage", "question", "answer")))


def _rte(r: Row) -> str:
    return (f"Premise: {need_text(r, 'premise')}\nHypothesis: {need_text(r, 'hypothesis')}\n"
            "Does the premise entail the hypothesis? Answer yes or no.")


register(Task("rte", ("entailment", "not_entailment"), ("yes", "no"),
              "Decide whether the premise entails the hypothesis.",
              ("accuracy",), (SUPERGLUE, "rte"), _rte, ("entailment", "not_entailment"),
              fields=texts("premise", "hypothesis")))


def _wic(r: Row) -> str:
    return (f"Sentence 1: {need_text(r, 'sentence1')}\nSentence 2: {need_text(r, 'sentence2')}\n"
            f"Is the word \"{need_text(r, 'word')}\" used with the same meaning in both sentences? "
            "Answer yes or no.")


register(Task("wic", ("false", "true"), YES_NO,
              "Decide whether a word has the same meaning in two sentences.",
              ("accuracy",), (SUPERGLUE, "wic"), _wic, BOOL, fields=texts("sentence1", "sentence2", "word")))


def _wsc(r: Row) -> str:
    target = need(r, "target", dict)
    pronoun, noun = need_text(target, "span2_text", "target"), need_text(target, "span1_text", "target")
    return (f"Text: {need_text(r, 'text')}\n"
            f"In the text above, does \"{pronoun}\" refer to \"{noun}\"? Answer yes or no.")


def _wsc_hub(r: Row) -> Row:
    """Hub rows are flat; local rows nest the spans under 'target'."""
    spans = ("span1_text", "span2_text", "span1_index", "span2_index")
    row = {k: v for k, v in r.items() if k not in spans}
    row["target"] = {k: r[k] for k in spans if k in r}
    return _hub_label(row, BOOL)


register(Task("wsc", ("false", "true"), YES_NO,
              "Decide whether a pronoun refers to a given noun phrase.",
              ("accuracy",), (SUPERGLUE, "wsc.fixed"), _wsc, BOOL, from_hub=_wsc_hub,
              fields={"text": str, "target": texts("span1_text", "span2_text")}))


NLI3 = ("entailment", "neutral", "contradiction")
register(Task("esnli", NLI3, NLI3, NLI_DESCRIPTION,
              ("accuracy",), ("esnli", None), _nli3("entailment, neutral or contradiction"), (0, 1, 2),
              id_key=None, fields=texts("premise", "hypothesis")))
register(Task("anli1", NLI3, NLI3, NLI_DESCRIPTION,
              ("accuracy",), ("facebook/anli", None), _nli3("entailment, neutral or contradiction"), (0, 1, 2),
              id_key="uid", hub_split=lambda split: split if split.endswith("_r1") else f"{split}_r1",
              fields=texts("premise", "hypothesis")))

LETTERS = ("a", "b", "c", "d", "e")


def _cqa_choices(r: Row) -> list[str]:
    choices = need(r, "choices", list)
    if len(choices) != len(LETTERS):
        raise DataError(f"expected {len(LETTERS)} choices, got {len(choices)}", field="choices")
    return [check(c, str, f"choices[{i}]") for i, c in enumerate(choices)]


def _cqa(r: Row) -> str:
    options = "\n".join(f"({k}) {c.strip()}" for k, c in zip(LETTERS, _cqa_choices(r)))
    return f"Question: {need_text(r, 'question')}\nChoices:\n{options}\nAnswer a, b, c, d or e."


def _cqa_choice(r: Row, option: str) -> str:
    return f"Question: {need_text(r, 'question')}\nAnswer: {option}"


def _cqa_hub(r: Row) -> Row:
    """Hub rows give the answer as a key (A..E, '' when unlabeled); local rows as the text.
    An unknown key is kept as the answer, for label_of to reject."""
    choices = dict(zip(r["choices"]["label"], r["choices"]["text"]))
    row = {"id": r["id"], "question": r["question"], "choices": list(choices.values())}
    if r.get("answerKey"):
        row["answer"] = choices.get(r["answerKey"], r["answerKey"])
    return row


# The answer is the text of the right choice; where two choices have the same text
# (42 of 9741 training rows) the first is taken, as the text cannot tell them apart.
register(Task("cqa", LETTERS, LETTERS, "Answer a commonsense question by picking one of five choices.",
              ("accuracy",), ("tau/commonsense_qa", None), _cqa, _cqa_choices,
              label_key="answer", id_key="id", from_hub=_cqa_hub,
              options=_cqa_choices, choice_template=_cqa_choice, fields={"question": str, "choices": list[str]}))


# A generated arithmetic task (python -m dhrd.demo --task sum4): its rationale writes the
# sum out and compares it with 20, so it carries everything the label needs. No hub data.
register(Task("sum4", ("no", "yes"), ("no", "yes"), "Decide whether a sum of four digits is more than 20.",
              ("accuracy",), None, lambda r: f"{need_text(r, 'question')}\nAnswer yes or no.", ("no", "yes"),
              fields=texts("question")))


FORMULATIONS = ("classify", "choice")


def choice_refusal(name: str) -> str:
    have = ", ".join(n for n, t in TASKS.items() if t.has_options)
    return (f"task {name!r} has no answer options: --formulation choice scores each option of a "
            f"multiple-choice task ({have}); use --formulation classify")


def check_formulation(task: Task, formulation: str) -> None:
    """Refuse a formulation the task cannot take, with a one-line reason."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is not one of {', '.join(FORMULATIONS)}")
    if formulation == "choice" and not task.has_options:
        raise ValueError(choice_refusal(task.name))


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def read_examples(task: Task | str, path: str | os.PathLike, *, require_labels: bool = True) -> list[Example]:
    return (get_task(task) if isinstance(task, str) else task).read(path, require_labels=require_labels)
