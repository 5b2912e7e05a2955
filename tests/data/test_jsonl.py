"""Every kind of unreadable line is a DataError naming file and line, in the task reader,
the rationale reader and ``dhrd predict``'s stdin, never a traceback from deep inside."""

from __future__ import annotations

import pytest

from dhrd.data.errors import DataError
from dhrd.data.rationales import read_rationales
from dhrd.data.tasks import get_task

GOOD = b'{"premise": "p", "hypothesis": "h", "idx": 0, "label": "entailment"}\n'
CASES = [
    (b'{"premise": "p\xff", "hypothesis": "h", "idx": 1, "label": "entailment"}\n', "not valid UTF-8"),
    (b'{"premise": "\\ud800", "hypothesis": "h", "idx": 1, "label": "entailment"}\n', "surrogate pair"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "nested too deeply"),
    (b'{"premise": "p", "hypothesis": "h", "idx": ' + b"9" * 5000 + b', "label": "entailment"}\n', "malformed JSON"),
    (b'{"premise": "p", "hypothesis": "h", "idx": 1, "label": "entailment"\n', "malformed JSON"),
]


@pytest.mark.parametrize("bad,message", CASES)
def test_task_reader_names_the_line(tmp_path, bad, message):
    path = tmp_path / "rte.jsonl"
    path.write_bytes(GOOD + b"\n" + bad + GOOD.replace(b'"idx": 0', b'"idx": 2'))
    with pytest.raises(DataError, match=rf"rte.jsonl:3: .*{message}") as e:
        get_task("rte").read(path)
    assert e.value.line == 3


@pytest.mark.parametrize("bad,message", CASES)
def test_rationale_reader_names_the_line(tmp_path, bad, message):
    path = tmp_path / "r.jsonl"
    bad = bad.replace(b'"premise"', b'"rationale"').replace(b'"idx"', b'"id"')
    path.write_bytes(b'{"id": "0", "rationale": "fine"}\n' + bad)
    with pytest.raises(DataError, match=rf"r.jsonl:2: .*{message}"):
        read_rationales(path)


def test_byte_order_mark_is_read_not_refused(tmp_path):
    path = tmp_path / "rte.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD)
    assert get_task("rte").read(path)[0].fields["premise"] == "p"


def test_predict_stdin_bytes_name_the_line(tmp_path, monkeypatch):
    import io
    import sys

    from dhrd.serve.predict import read_examples

    raw = io.TextIOWrapper(io.BytesIO(GOOD + b'{"premise": "\xc3", "hypothesis": "h", "idx": 1}\n'))
    monkeypatch.setattr(sys, "stdin", raw)
    with pytest.raises(DataError, match=r"<stdin>:2: not valid UTF-8"):
        read_examples("rte", "-")


@pytest.mark.parametrize("row,message", [
    (b'{"premise": "p", "premise": "q", "hypothesis": "h", "idx": 1, "label": "entailment"}\n',
     "duplicate key 'premise'"),
    (b'{"premise": "   ", "hypothesis": "h", "idx": 1, "label": "entailment"}\n', "field 'premise': empty"),
])
def test_duplicate_keys_and_empty_text_are_refused(tmp_path, row, message):
    path = tmp_path / "rte.jsonl"
    path.write_bytes(GOOD + row)
    with pytest.raises(DataError, match=rf"rte.jsonl:2: .*{message}"):
        get_task("rte").read(path)
