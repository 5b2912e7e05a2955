"""Versioned teacher prompt templates per task, and the parsing of a teacher's answer
back into a label.

Every generated record carries the template's ``version``: a rationale set made with one
wording must never silently mix with another. Change a wording by registering a new
version, never by editing an old one.

Two modes:
- ``gold`` (the paper's): the teacher is given the gold answer and told to explain it
  without restating it; zero-shot "Let's think step by step", ending with the end marker.
- ``blind``: the teacher answers itself; its ``Answer: ...`` line is parsed into
  ``teacher_label`` (for label-consistency filtering) and cut from the rationale.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..data.rationales import END_MARKER
from ..data.tasks import TASKS, Example, Task

MODES = ("gold", "blind")


@dataclass(frozen=True)
class Prompt:
    """One request: a system and a user turn. Chat teachers get ``messages()``; plain
    completion teachers (no chat template, /v1/completions) get ``text()``."""

    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        return turns + [{"role": "user", "content": self.user}]

    def text(self) -> str:
        head = f"{self.system}\n\n" if self.system else ""
        return f"{head}{self.user}\n"


@dataclass(frozen=True)
class PromptTemplate:
    """``user`` is a str.format template over: description, input, answer (gold mode),
    options (the answer forms, e.g. "yes or no") and end (the end marker)."""

    version: str
    mode: str
    system: str
    user: str

    def render(self, task: Task, example: Example) -> Prompt:
        values = {"description": task.description, "input": example.text, "end": END_MARKER,
                  "options": _options(task), "answer": ""}
        if self.mode == "gold":
            if example.label is None:
                raise ValueError(f"example {example.id!r} has no gold label (gold mode needs one)")
            values["answer"] = answer_text(task, example.fields, example.label)
        return Prompt(self.system, self.user.format(**values))


SYSTEM = "You are a careful expert who explains the reasoning behind answers to questions."

GOLD_V1 = PromptTemplate("gold-v1", "gold", SYSTEM, (
    "Task: {description}\n\n{input}\n\n"
    "The correct answer is: {answer}\n\n"
    "Explain the reasoning that leads to this answer. Do not restate the answer itself; "
    "give only the reasoning. When you are done, write {end}.\n\n"
    "Let's think step by step."))

BLIND_V1 = PromptTemplate("blind-v1", "blind", SYSTEM, (
    "Task: {description}\n\n{input}\n\n"
    "Let's think step by step. After your reasoning, give your final answer on its own line "
    "as \"Answer: <{options}>\", then write {end}."))

# task name -> version -> template. Every task gets the generic templates; a task that
# needs its own wording registers a new version for that task only.
_TEMPLATES: dict[str, dict[str, PromptTemplate]] = {}


def register_template(template: PromptTemplate, tasks: tuple[str, ...] | None = None) -> None:
    if template.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {template.mode!r}")
    for name in tasks or tuple(TASKS):
        versions = _TEMPLATES.setdefault(name, {})
        if template.version in versions and versions[template.version] != template:
            raise ValueError(f"prompt version {template.version!r} for {name!r} already exists: "
                             "register a new version instead of changing an old one")
        versions[template.version] = template


register_template(GOLD_V1)
register_template(BLIND_V1)


def get_template(task: Task | str, mode: str = "gold", version: str | None = None) -> PromptTemplate:
    """The named version, or the newest registered for this task and mode."""
    name = task if isinstance(task, str) else task.name
    versions = _TEMPLATES.get(name, {})
    if version is not None:
        if version not in versions:
            raise ValueError(f"no prompt version {version!r} for task {name!r}; "
                             f"known: {', '.join(versions) or 'none'}")
        template = versions[version]
        if template.mode != mode:
            raise ValueError(f"prompt version {version!r} is a {template.mode!r} template, not {mode!r}")
        return template
    matching = [t for t in versions.values() if t.mode == mode]
    if not matching:
        raise ValueError(f"no {mode!r} prompt for task {name!r}")
    return matching[-1]


# ---------------------------------------------------------------------------------------
# How answers are shown to the teacher, and read back.

def _cqa_answer(fields: Mapping[str, Any], label: int) -> str:
    return f"({'abcde'[label]}) {str(fields['choices'][label]).strip()}"


def _copa_answer(fields: Mapping[str, Any], label: int) -> str:
    return f"Option {label + 1} ({str(fields[f'choice{label + 1}']).strip()})"


# task -> answer text for the gold label, where the bare verbalizer reads poorly
_ANSWER_TEXT: dict[str, Callable[[Mapping[str, Any], int], str]] = {"cqa": _cqa_answer, "copa": _copa_answer}


def answer_text(task: Task, fields: Mapping[str, Any], label: int) -> str:
    special = _ANSWER_TEXT.get(task.name)
    return special(fields, label) if special else task.verbalizers[label]


def _options(task: Task) -> str:
    forms = list(dict.fromkeys(task.verbalizers))
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


_NLI = {"entails": "entailment", "entailed": "entailment", "entail": "entailment",
        "contradicts": "contradiction", "contradictory": "contradiction", "contradict": "contradiction",
        "neither": "neutral", "it is not possible to tell": "neutral", "undetermined": "neutral"}
# task -> extra answer forms -> label name
SYNONYMS: dict[str, dict[str, str]] = {
    "cb": _NLI, "esnli": _NLI, "anli1": _NLI,
    "rte": {"entails": "entailment", "not entailment": "not_entailment", "no entailment": "not_entailment",
            "true": "entailment", "false": "not_entailment"},
    "copa": {"option 1": "choice1", "option 2": "choice2", "choice 1": "choice1", "choice 2": "choice2"},
    **{name: {"true": "true", "false": "false", "correct": "true", "incorrect": "false"}
       for name in ("boolq", "multirc", "wic", "wsc")},
}
_ANSWER_RE = re.compile(r"(?:so the answer is|(?:^|\n)[ \t*#]*(?:final )?answer[ \t*]*:)[ \t*]*", re.IGNORECASE)
_LETTER_RE = re.compile(r"^\(([a-e])\)|^([a-e])\)")


def _norm(text: str) -> str:
    text = text.strip().lower().replace("*", "").strip()
    return text.strip(" \t\n\"'`").rstrip(".!;:,").strip()


def split_answer(text: str) -> tuple[str, str | None]:
    """(rationale, answer) at the LAST "So the answer is" / "Answer:"; the answer is the
    rest of that line. No answer found: (text, None)."""
    found = list(_ANSWER_RE.finditer(text))
    if not found:
        return text.strip(), None
    last = found[-1]
    answer = text[last.end():].split("\n", 1)[0]
    return text[:last.start()].strip().rstrip(",;:").rstrip(), answer.strip()


def match_label(task: Task, answer: str | None, fields: Mapping[str, Any] | None = None) -> int | None:
    """The label index an answer string names, or None when it names none or is ambiguous.

    Exact forms first (label names, verbalizers, synonyms, CQA "(d) ..." letters and choice
    texts, COPA choice texts), then the first word for multi-letter forms ("neutral, since
    ..."). Single letters never match by first word: "a house" is not answer (a)."""
    if answer is None:
        return None
    a = _norm(answer)
    if not a:
        return None
    forms: dict[str, int] = {}
    for i, (name, verb) in enumerate(zip(task.labels, task.verbalizers)):
        forms.setdefault(name.lower(), i)
        forms.setdefault(verb.lower(), i)
    for form, name in SYNONYMS.get(task.name, {}).items():
        forms.setdefault(form, task.labels.index(name))
    if task.name == "cqa":
        letter = _LETTER_RE.match(a)
        if letter:
            return "abcde".index(letter.group(1) or letter.group(2))
        for i, choice in enumerate((fields or {}).get("choices", ())):
            forms.setdefault(_norm(str(choice)), i)
    if task.name == "copa" and fields:
        for i in (0, 1):
            forms.setdefault(_norm(str(fields.get(f"choice{i + 1}", ""))) or f"\0{i}", i)
    if a in forms:
        return forms[a]
    first = re.match(r"[a-z_]+(?: [a-z_]+)?", a)
    if first:
        for candidate in (first.group(0), first.group(0).split(" ")[0]):
            if len(candidate) > 1 and candidate in forms:
                return forms[candidate]
    return None
