"""Rationale store: reading, cleaning, joining, policies, and bad input."""

import json

import pytest

from dhrd.data.errors import DataError
from dhrd.data.rationales import attach_rationales, clean_rationale, read_rationales
from dhrd.data.report import DataReport
from dhrd.data.tasks import Example

LABELS = ("entailment", "not_entailment")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def examples(n=4):
    return [Example(id=str(i), text=f"x{i}", label=i % 2) for i in range(n)]


def test_clean_cuts_end_marker_and_blank_runs():
    assert clean_rationale("  a\n\n\n\nb [END OF REASONING] tail") == "a\n\nb"


def test_read_and_attach_with_report(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "0", "rationale": "because A [END OF REASONING]", "teacher_label": "entailment"},
        {"id": 1, "rationale": "because B", "teacher_label": "entailment"},  # disagrees (gold 1)
        {"id": "9", "rationale": "stray"},                                    # unknown id
        {"id": "3", "rationale": "   [END OF REASONING]"},                    # empty after cleaning
        "",
    ])
    report = DataReport()
    rats = read_rationales(path, LABELS, report)
    assert set(rats) == {"0", "1", "9"} and rats["0"].text == "because A"
    assert report["skipped/rationale_empty"] == 1
    items = attach_rationales(examples(), rats, LABELS, report=report)
    assert [it.rationale for it in items] == ["because A", "because B", None, None]
    assert report["skipped/rationale_unknown_id"] == 1
    assert report["label_disagree_kept"] == 1
    assert report["examples_without_rationale"] == 2
    assert report["examples_used"] == 4 and report["examples_with_rationale"] == 2
    assert f"{path}:3" in report.samples["rationale_unknown_id"][0]


@pytest.mark.parametrize("policy,n_items,with_r", [("drop", 4, 1), ("drop_example", 3, 1)])
def test_label_consistency_policies(tmp_path, policy, n_items, with_r):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "0", "rationale": "ok", "teacher_label": "entailment"},
        {"id": "1", "rationale": "wrong", "teacher_label": "entailment"},
    ])
    report = DataReport()
    items = attach_rationales(examples(), read_rationales(path, LABELS), LABELS, consistency=policy,
                              report=report)
    assert len(items) == n_items
    assert sum(it.rationale is not None for it in items) == with_r
    assert sum(v for k, v in report.counts.items() if k.startswith("skipped/label_disagree")) == 1


def test_label_only_and_shuffled_modes(tmp_path):
    rows = [{"id": str(i), "rationale": f"r{i}"} for i in range(30)]
    rats = read_rationales(write_jsonl(tmp_path / "r.jsonl", rows))
    exs = examples(30)
    assert all(it.rationale is None for it in attach_rationales(exs, rats, LABELS, mode="none"))
    shuffled = attach_rationales(exs, rats, LABELS, mode="shuffled", seed=3)
    assert sorted(it.rationale for it in shuffled) == sorted(f"r{i}" for i in range(30))
    assert sum(it.rationale != f"r{it.example.id}" for it in shuffled) > 20
    again = attach_rationales(exs, rats, LABELS, mode="shuffled", seed=3)
    assert [it.rationale for it in again] == [it.rationale for it in shuffled]


@pytest.mark.parametrize("line,field,fragment", [
    ('{"id": "1", "rationale": ', None, "malformed JSON"),
    ('["id", "rationale"]', None, "JSON object"),
    ('{"rationale": "r"}', "id", "missing"),
    ('{"id": "1"}', "rationale", "missing"),
    ('{"id": "1", "rationale": 5}', "rationale", "string"),
    ('{"id": "1", "rationale": "r", "teacher_label": "maybe"}', "teacher_label", "unknown label"),
])
def test_bad_lines_name_file_line_field(tmp_path, line, field, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "0", "rationale": "fine"}', line])
    with pytest.raises(DataError) as err:
        read_rationales(path, LABELS)
    msg = str(err.value)
    assert "bad.jsonl:2" in msg and fragment in msg
    if field:
        assert f"field '{field}'" in msg


def test_duplicate_id_and_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": "1", "rationale": "a"}, {"id": "1", "rationale": "b"}])
    with pytest.raises(DataError, match=r"dup.jsonl:2: field 'id': duplicate id '1' \(first at .*dup.jsonl:1\)"):
        read_rationales(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no rationales"):
        read_rationales(empty)


def test_rationales_of_other_examples_are_refused(tmp_path):
    """Ids that point at other rows (a renumbered subset of e-SNLI, say): the teacher labels
    agree with the gold labels at chance level, and training would silently be the
    shuffled-rationale ablation."""
    import json
    import random

    import pytest

    from dhrd.data.rationales import attach_rationales, read_rationales
    from dhrd.data.tasks import get_task

    task = get_task("esnli")
    rng = random.Random(0)
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": rng.randrange(3)} for i in range(300)]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = task.read(tmp_path / "x.jsonl")

    def rationale_file(shift):  # the teacher agrees with gold 75% of the time, ids shifted by `shift`
        path = tmp_path / f"r{shift}.jsonl"
        recs = []
        for i, r in enumerate(rows):
            teacher = r["label"] if rng.random() < 0.75 else (r["label"] + 1) % 3
            recs.append({"id": str((i + shift) % len(rows)), "rationale": f"because {i}",
                         "teacher_label": task.labels[teacher]})
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        return read_rationales(path, task.labels)

    items = attach_rationales(examples, rationale_file(0), task.labels)
    assert len(items) == 300
    with pytest.raises(ValueError, match=r"r7.jsonl: teacher_label agrees with the gold label on only \d+ of 300"):
        attach_rationales(examples, rationale_file(7), task.labels)


def test_k_rationales_an_example_each_judged_by_its_own_teacher_label(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [
        {"id": "0", "rationales": ["a0", "b0 [END OF REASONING] x", "  "]},           # one empty after cleaning
        {"id": "1", "rationales": ["a1", "b1"], "teacher_labels": ["entailment", "not_entailment"]},
        {"id": "2", "rationales": ["a2"], "teacher_labels": ["not_entailment"]},     # disagrees (gold 0)
        {"id": "3", "rationale": "single"},
    ])
    report = DataReport()
    rats = read_rationales(path, LABELS, report)
    assert rats["0"].texts == ("a0", "b0") and rats["0"].text == "a0" and rats["3"].texts == ()
    assert report["skipped/rationale_empty"] == 1
    items = attach_rationales(examples(), rats, LABELS, report=report)
    assert [(it.rationale, it.alternatives) for it in items] == [
        ("a0", ("b0",)), ("a1", ("b1",)), ("a2", ()), ("single", ())]
    assert report["examples_with_several_rationales"] == 2 and report["rationales_used"] == 6
    # drop: only the disagreeing rationale goes; the example keeps its agreeing one / trains the classifier
    dropped = attach_rationales(examples(), rats, LABELS, consistency="drop")
    assert [(it.rationale, it.alternatives) for it in dropped] == [
        ("a0", ("b0",)), ("b1", ()), (None, ()), ("single", ())]
    # drop_example: an example goes only when none of its rationales agrees
    kept = attach_rationales(examples(), rats, LABELS, consistency="drop_example")
    assert [it.example.id for it in kept] == ["0", "1", "3"]
    # at most k of them
    one = attach_rationales(examples(), rats, LABELS, per_example=1)
    assert all(it.alternatives == () for it in one) and one[1].rationale == "a1"
    # shuffled moves an example's whole set
    shuffled = attach_rationales(examples(), rats, LABELS, mode="shuffled", seed=3)
    assert sorted((it.rationale, it.alternatives) for it in shuffled) == sorted(
        (it.rationale, it.alternatives) for it in items)


@pytest.mark.parametrize("row,field,fragment", [
    ({"id": "1", "rationales": []}, "rationales", "non-empty list"),
    ({"id": "1", "rationales": ["a", 3]}, "rationales[1]", "string"),
    ({"id": "1", "rationales": ["a"], "rationale": "b"}, "rationales", "not both"),
    ({"id": "1", "rationales": ["a", "b"], "teacher_labels": ["entailment"]}, "teacher_labels", "as long"),
    ({"id": "1", "rationales": ["a"], "teacher_labels": ["maybe"]}, "teacher_labels[0]", "unknown label"),
])
def test_bad_k_rationale_lines(tmp_path, row, field, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "0", "rationale": "fine"}, row])
    with pytest.raises(DataError) as err:
        read_rationales(path, LABELS)
    msg = str(err.value)
    assert "bad.jsonl:2" in msg and fragment in msg and f"field '{field}'" in msg
