"""Each task's input template as Jinja2 text, for an exported classifier's users.

Training renders x with the task's Python template (``Task.render``). An exported model
must turn raw fields into exactly that text without our code, so the export stores the
template as Jinja2 source (config key :data:`CONFIG_KEY`; Jinja2 ships with
transformers, which uses it for chat templates). :func:`render_input` applies it in a
sandbox; tests/data/test_templates.py proves it equal to ``Task.render`` for every task.

Rows are in the task's local format (the fields of ``Example.fields``: for MultiRC one
flat answer row ``{passage, question, answer}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

CONFIG_KEY = "dhrd_input_template"
FIELDS_KEY = "dhrd_input_fields"

_NLI3 = ("Premise: {{ premise|trim }}\nHypothesis: {{ hypothesis|trim }}\n"
         "Does the premise entail or contradict the hypothesis, or neither? Answer %s.")

# task name -> (Jinja2 source, the row fields it reads)
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolq": ("Passage: {{ passage|trim }}\nQuestion: {{ (question|trim).rstrip('?') }}?\nAnswer yes or no.",
              ("passage", "question")),
    "cb": (_NLI3 % "entailment, contradiction or neutral", ("premise", "hypothesis")),
    "copa": ("Premise: {{ premise|trim }}\nOption 1: {{ choice1|trim }}\nOption 2: {{ choice2|trim }}\n"
             "Which option is more plausibly the {{ question }}? Answer 1 or 2.",
             ("premise", "choice1", "choice2", "question")),
    "multirc": ("Passage: {{ passage|trim }}\nQuestion: {{ question|trim }}\nCandidate answer: {{ answer|trim }}\n"
                "Is the candidate answer correct? Answer yes or no.", ("passage", "question", "answer")),
    "rte": ("Premise: {{ premise|trim }}\nHypothesis: {{ hypothesis|trim }}\n"
            "Does the premise entail the hypothesis? Answer yes or no.", ("premise", "hypothesis")),
    "wic": ("Sentence 1: {{ sentence1|trim }}\nSentence 2: {{ sentence2|trim }}\n"
            "Is the word \"{{ word|trim }}\" used with the same meaning in both sentences? Answer yes or no.",
            ("sentence1", "sentence2", "word")),
    "wsc": ("Text: {{ text|trim }}\nIn the text above, does \"{{ target.span2_text|trim }}\" refer to "
            "\"{{ target.span1_text|trim }}\"? Answer yes or no.", ("text", "target")),
    "esnli": (_NLI3 % "entailment, neutral or contradiction", ("premise", "hypothesis")),
    "anli1": (_NLI3 % "entailment, neutral or contradiction", ("premise", "hypothesis")),
    "cqa": ("Question: {{ question|trim }}\nChoices:\n"
            "{% for c in choices %}({{ 'abcde'[loop.index0] }}) {{ c|trim }}\n{% endfor %}"
            "Answer a, b, c, d or e.", ("question", "choices")),
    "sum4": ("{{ question|trim }}\nAnswer yes or no.", ("question",)),
}


def template_for(task_name: str) -> tuple[str, tuple[str, ...]]:
    try:
        return TEMPLATES[task_name]
    except KeyError:
        raise ValueError(f"task {task_name!r} has no input template for export") from None


@lru_cache(maxsize=32)
def _compiled(source: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(source)


def render_input(template: str, row: Mapping) -> str:
    """The classifier input for ``row`` (a mapping of the task's fields). A missing field
    is an error naming it (StrictUndefined), never an empty hole in the text."""
    from jinja2 import UndefinedError

    if not isinstance(row, Mapping):
        raise ValueError(f"an input row must be a JSON object of fields, got {type(row).__name__}")
    try:
        return _compiled(template).render(**row)
    except UndefinedError as e:
        raise ValueError(f"input row lacks a field the template needs: {e.message}") from None
