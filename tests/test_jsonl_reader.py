"""The one JSONL reader (dhrd/jsonl.py) behind every module that reads JSON Lines: each
former reader (the generator's logs and merge, grid records, run predictions, the data
carving, the harness's metrics tail) still names the file and line of a bad line, and
tolerates a torn last line exactly where it did before."""

from __future__ import annotations

import json
import os

import pytest

from dhrd.errors import DataError
from dhrd.experiment.grid import GridError
from dhrd.jsonl import read_jsonl

GOOD = b'{"id": "0", "rationale": "r", "prompt_version": "gold-v1"}\n'
BAD = b'{"id": "1", "rationale": \n'
TORN = b'{"id": "2", "ratio'


def test_a_last_line_without_newline_is_read_skipped_or_cut(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(GOOD + b"\n" + GOOD.rstrip(b"\n"))  # an editor's file: no final newline
    assert [n for n, _ in read_jsonl(path)] == [1, 3]
    path.write_bytes(GOOD + TORN)
    with pytest.raises(DataError, match=r"log\.jsonl:2: malformed JSON"):
        list(read_jsonl(path))
    assert [n for n, _ in read_jsonl(path, torn_tail="skip")] == [1]
    assert path.read_bytes() == GOOD + TORN  # skipped, not cut
    assert [n for n, _ in read_jsonl(path, torn_tail="cut")] == [1]
    assert path.read_bytes() == GOOD  # the next append starts a fresh line
    with pytest.raises(ValueError, match="torn_tail must be one of"):
        list(read_jsonl(path, torn_tail="repair"))


def test_only_the_last_line_is_forgiven_and_missing_files_only_when_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(GOOD + BAD + GOOD + TORN)
    for torn_tail in ("skip", "cut"):
        with pytest.raises(DataError, match=r"log\.jsonl:2: malformed JSON"):
            list(read_jsonl(path, torn_tail=torn_tail))
    assert list(read_jsonl(tmp_path / "missing.jsonl", missing_ok=True)) == []
    with pytest.raises(FileNotFoundError):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_a_caller_gets_the_error_class_its_command_catches(tmp_path):
    class Mine(DataError):
        pass

    path = tmp_path / "x.jsonl"
    path.write_bytes(GOOD + b'{"a": 1, "a": 2}\n')
    with pytest.raises(Mine, match=r"x\.jsonl:2: duplicate key 'a'") as e:
        list(read_jsonl(path, error=Mine))
    assert (e.value.path, e.value.line) == (path, 2)


def test_generation_logs_name_the_line_and_forgive_a_torn_tail(tmp_path):
    from dhrd.teacher.generation_log import read_log
    from dhrd.teacher.merge import merge

    path = tmp_path / "r.jsonl"
    path.write_bytes(GOOD + TORN)
    assert [row["id"] for _, row in read_log(str(path))] == ["0"] and path.read_bytes() == GOOD + TORN
    assert [row["id"] for _, row in read_log(str(path), repair=True)] == ["0"] and path.read_bytes() == GOOD
    assert read_log(str(tmp_path / "none.jsonl")) == []
    path.write_bytes(GOOD + BAD)
    with pytest.raises(DataError, match=r"r\.jsonl:2: malformed JSON"):
        read_log(str(path))
    with pytest.raises(DataError, match=r"r\.jsonl:2: malformed JSON"):
        merge([str(path)], str(tmp_path / "merged.jsonl"))
    path.write_bytes(GOOD + b'["not", "a record"]\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: field 'id': expected an object with a string 'id'"):
        read_log(str(path))


def test_grid_records_and_run_predictions_name_the_line(tmp_path):
    from dhrd.experiment.records import RecordsError, read_predictions, read_records

    (tmp_path / "records.jsonl").write_bytes(b"\n" + BAD)
    with pytest.raises(RecordsError, match=r"records\.jsonl:2: malformed JSON") as e:
        read_records(str(tmp_path))
    assert isinstance(e.value, GridError) and isinstance(e.value, DataError)  # `dhrd experiment` reports it
    (tmp_path / "records.jsonl").write_text('{"run": "a", "task": "t", "method": "m", "seed": 0, '
                                            '"labels": "01", "preds": "0"}\n')
    with pytest.raises(RecordsError, match=r"records\.jsonl:1: field 'preds': run 'a': 1 predictions for 2 labels"):
        read_records(str(tmp_path))
    preds = tmp_path / "eval_predictions.jsonl"
    preds.write_text('{"label": 1, "pred": 0}\n{"label": 1, "pred": \n')
    with pytest.raises(DataError, match=r"eval_predictions\.jsonl:2: malformed JSON"):
        read_predictions(str(preds))
    preds.write_text('{"label": 1, "pred": 0}\n\n{"label": 0, "cot_pred": 0, "group": 3}\n')
    assert read_predictions(str(preds)) == ([1, 0], [0, 0], [None, 3])


def test_carving_names_the_line_of_a_malformed_source(tmp_path):
    from dhrd.experiment.prepare import carve

    src = tmp_path / "esnli.jsonl"
    src.write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": 0}) + "\n\n{oops\n")
    with pytest.raises(DataError, match=r"esnli\.jsonl:3: malformed JSON"):
        carve("esnli", str(src), str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), dev_size=1)
    assert not os.path.exists(tmp_path / "train.jsonl")


def test_the_metrics_tail_leaves_out_cut_and_bad_lines(tmp_path):
    from dhrd.experiment.runner import _train_rows

    row = {"kind": "train", "step": 1, "time": 0.0, "train/loss_cls": 0.5}
    lines = [json.dumps({**row, "step": s}) for s in range(1, 40)]
    data = ("\n".join(lines[:20] + ["{garbage", json.dumps({"kind": "eval", "step": 20})] + lines[20:])
            + "\n" + lines[0][:10]).encode()  # a torn last line
    (tmp_path / "metrics.jsonl").write_bytes(data)
    assert [r["step"] for r in _train_rows(str(tmp_path), len(data))] == list(range(1, 40))
    tail = _train_rows(str(tmp_path), 300)  # the seek lands inside a line: it is left out
    assert tail and [r["step"] for r in tail] == list(range(40 - len(tail), 40))
    assert _train_rows(str(tmp_path / "none")) == []
