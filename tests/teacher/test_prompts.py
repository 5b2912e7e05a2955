"""Prompt templates (versions, gold/blind wording) and answer parsing."""

import pytest

from dhrd.data.rationales import END_MARKER
from dhrd.data.tasks import Example, get_task
from dhrd.teacher import prompts
from dhrd.teacher.prompts import PromptTemplate, get_template, match_label, register_template, split_answer

CQA_FIELDS = {"choices": ["park", "coloring book", "garden center", "math problem", "gravity"]}


def test_gold_prompt_gives_the_answer_and_the_paper_instructions():
    task = get_task("cqa")
    ex = Example("q1", task.render({**CQA_FIELDS, "question": "Ten apples, three fall?", "answer": "math problem"}),
                 3, fields={**CQA_FIELDS, "question": "Ten apples, three fall?"})
    template = get_template(task, "gold")
    prompt = template.render(task, ex)
    assert template.version == "gold-v1"
    assert "The correct answer is: (d) math problem" in prompt.user
    assert "Do not restate the answer" in prompt.user and END_MARKER in prompt.user
    assert prompt.user.endswith("Let's think step by step.")
    assert prompt.messages()[0]["role"] == "system" and prompt.messages()[1]["content"] == prompt.user
    assert prompt.text().startswith(prompt.system) and prompt.text().endswith("step by step.\n")


def test_blind_prompt_hides_the_label_and_names_the_answer_forms():
    task = get_task("copa")
    fields = {"premise": "It rained.", "choice1": "The grass got wet.", "choice2": "The sun shone.",
              "question": "effect"}
    ex = Example("0", task.render(fields), 0, fields=fields)
    user = get_template(task, "blind").render(task, ex).user
    assert "correct answer" not in user and 'Answer: <1 or 2>' in user
    gold = get_template(task, "gold").render(task, ex).user
    assert "The correct answer is: Option 1 (The grass got wet.)" in gold
    with pytest.raises(ValueError, match="no gold label"):
        get_template(task, "gold").render(task, Example("1", "x", None, fields=fields))


def test_versions_are_immutable_and_looked_up_by_mode(monkeypatch):
    with pytest.raises(ValueError, match="no prompt version 'v9'"):
        get_template("cb", "gold", "v9")
    with pytest.raises(ValueError, match="is a 'blind' template"):
        get_template("cb", "gold", "blind-v1")
    changed = PromptTemplate("gold-v1", "gold", "other system", "{input}")
    with pytest.raises(ValueError, match="register a new version"):
        register_template(changed, ("cb",))
    monkeypatch.setitem(prompts._TEMPLATES, "wic", dict(prompts._TEMPLATES["wic"]))  # undone after
    register_template(PromptTemplate("gold-test-v2", "gold", "s", "{input} {answer}"), ("wic",))
    assert get_template("wic", "gold").version == "gold-test-v2"  # newest wins for that task only
    assert get_template("cb", "gold").version == "gold-v1"


@pytest.mark.parametrize("text,rationale,answer", [
    ("Only math problem fits. So the answer is (d) math problem.", "Only math problem fits.", "(d) math problem."),
    ("The packages may be from lunch.\nAnswer: neutral", "The packages may be from lunch.", "neutral"),
    ("October is month ten, so the answer is entailment.", "October is month ten", "entailment."),
    ("Step one.\n**Answer:** yes", "Step one.", "yes"),
    ("Answer: maybe. More text.\nAnswer: no", "Answer: maybe. More text.", "no"),
    ("no answer here", "no answer here", None),
])
def test_split_answer_takes_the_last_answer(text, rationale, answer):
    assert split_answer(text) == (rationale, answer)


@pytest.mark.parametrize("task,answer,label", [
    ("cqa", "(d) math problem.", 3), ("cqa", "(B)", 1), ("cqa", "e) gravity", 4),
    ("cqa", "Garden Center", 2),              # the choice's text
    ("cqa", "either (a) park or (e) gravity.", None),  # ambiguous
    ("cqa", "a house", None),                  # a single letter never matches by first word
    ("esnli", "neutral", 1), ("anli1", "contradiction.", 2), ("esnli", "Entailment, since it says so", 0),
    ("cb", "it is not possible to tell", 2), ("esnli", "banana", None), ("esnli", "", None),
    ("boolq", "Yes.", 1), ("boolq", "no, because", 0), ("wsc", "True", 1),
    ("rte", "not entailment", 1), ("rte", "yes", 0),
    ("copa", "1", 0), ("copa", "Option 2", 1), ("copa", "the sun shone", 1),
])
def test_match_label(task, answer, label):
    fields = CQA_FIELDS if task == "cqa" else {"choice1": "The grass got wet.", "choice2": "The sun shone."}
    assert match_label(get_task(task), answer, fields) == label
