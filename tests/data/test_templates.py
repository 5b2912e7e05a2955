"""The exported Jinja2 input templates render exactly what training rendered."""

from __future__ import annotations

import pytest

from dhrd.data.tasks import TASKS, get_task
from dhrd.data.templates import TEMPLATES, render_input, template_for

ROWS = {
    "boolq": [{"passage": "  A passage.\n", "question": "is it true??"}, {"passage": "P", "question": "q"}],
    "cb": [{"premise": " It rains. ", "hypothesis": "It is wet."}],
    "copa": [{"premise": "The man fell.", "choice1": " He slipped.", "choice2": "He sang. ", "question": "cause"}],
    "multirc": [{"passage": "Text\nwith lines", "question": "Who?", "answer": " Bob "}],
    "rte": [{"premise": "A dog runs.", "hypothesis": "An animal moves."}],
    "wic": [{"sentence1": "Bank of a river.", "sentence2": "A bank loan.", "word": " bank"}],
    "wsc": [{"text": "Mark told Pete he was late.", "target": {"span1_text": "Pete", "span2_text": "he "}}],
    "esnli": [{"premise": "Two men {{ play }}.", "hypothesis": "{% raw %}People{% endraw %} play."}],
    "anli1": [{"premise": "Long premise " * 20, "hypothesis": "h"}],
    "cqa": [{"question": "Where? ", "choices": [" a house", "b", "c ", "d", "e"]}],
    "sum4": [{"question": "3 + 4 + 5 + 9"}],
}


def test_every_task_has_a_template_and_rows():
    assert set(TEMPLATES) == set(TASKS) == set(ROWS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_template_equals_the_training_render(name):
    task = get_task(name)
    source, fields = template_for(name)
    for row in ROWS[name]:
        assert set(fields) <= set(row)
        # the field values are data, never template code: braces in them stay as they are
        assert render_input(source, row) == task.render(row)


def test_missing_field_is_named():
    with pytest.raises(ValueError, match="hypothesis"):
        render_input(template_for("rte")[0], {"premise": "p"})


def test_not_a_mapping_is_refused():
    with pytest.raises(ValueError, match="JSON object"):
        render_input(template_for("rte")[0], ["p", "h"])


def test_the_sandbox_refuses_unsafe_attributes():
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        render_input("{{ x.__class__.__mro__ }}", {"x": "s"})
