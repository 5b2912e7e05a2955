"""Label-consistency report, the keep/drop/strict filter, the regenerate list, length
statistics, and the regenerate -> merge round trip."""

import json

import pytest

from dhrd.data.errors import DataError
from dhrd.data.tasks import get_task
from dhrd.teacher.consistency import check, length_stats, main, percentile
from dhrd.teacher.generate import GenerateConfig, run
from dhrd.teacher.merge import merge
from tests.teacher.teacher_helpers import CB_LABELS, FakeTeacher, read_jsonl, write_cb


def write_rationales(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 6)  # gold: entailment, contradiction, neutral, ...
    rats = write_rationales(tmp_path / "r.jsonl", [
        {"id": "0", "rationale": "one two three", "teacher_label": "entailment"},      # agree
        {"id": "1", "rationale": "a b", "teacher_label": "neutral"},                   # disagree
        {"id": "2", "rationale": "x [END OF REASONING] tail", "teacher_label": None},   # no label
        {"id": "3", "rationale": "four words are here", "teacher_label": "contradiction"},  # disagree
        {"id": "4", "rationale": "agree", "teacher_label": "contradiction"},           # agree
        {"id": "77", "rationale": "stray", "teacher_label": "neutral"},                # unknown id
    ])  # id 5 has none
    return data, rats


def test_report_counts_and_lengths(files):
    report, kept = check(get_task("cb"), *map(str, files), policy="keep")
    counts = (report.examples, report.rationales, report.agree, report.disagree, report.no_teacher_label)
    assert counts == (6, 5, 2, 2, 1)
    assert report.unknown_ids == ["77"] and report.missing_ids == ["5"] and report.disagree_ids == ["1", "3"]
    assert report.agreement() == 0.5 and len(kept) == 5
    assert report.confusion[("contradiction", "neutral")] == 1
    words = report.lengths["words"]  # texts: 3, 2, 1 ("x", cleaned), 4, 1 words
    assert (words["n"], words["mean"], words["p50"], words["p90"], words["max"]) == (5, 2.2, 2, 4, 4)
    assert report.lengths["chars"]["max"] == len("four words are here")
    assert "agreement 50.00% of labeled" in report.format()


@pytest.mark.parametrize("policy,kept_ids", [("keep", ["0", "1", "2", "3", "4"]), ("drop", ["0", "2", "4"]),
                                             ("strict", ["0", "4"])])
def test_policies(files, policy, kept_ids):
    _, kept = check(get_task("cb"), *map(str, files), policy=policy)
    assert [r["id"] for r in kept] == kept_ids


def test_cli_writes_filtered_file_regenerate_list_and_report(files, tmp_path, capsys):
    data, rats = files
    args = ["--task", "cb", "--input", str(data), "--rationales", str(rats), "--policy", "strict",
            "--out", str(tmp_path / "kept.jsonl"), "--regenerate_ids", str(tmp_path / "ids.txt"),
            "--include_missing", "--report", str(tmp_path / "rep.json")]
    assert main(args) == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "kept.jsonl")] == ["0", "4"]
    assert (tmp_path / "ids.txt").read_text().split() == ["1", "3", "2", "5"]
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["disagree"] == 2 and rep["kept_lengths"]["words"]["n"] == 2
    assert "teacher label: agree 2, disagree 2, none 1" in capsys.readouterr().out


def test_bad_teacher_label_and_duplicates_name_the_line(files, tmp_path):
    data, _ = files
    bad = write_rationales(tmp_path / "bad.jsonl", [{"id": "0", "rationale": "r", "teacher_label": "maybe"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'teacher_label': unknown label 'maybe'"):
        check(get_task("cb"), str(data), str(bad))
    dup = write_rationales(tmp_path / "dup.jsonl", [{"id": "0", "rationale": "r"}] * 2)
    with pytest.raises(DataError, match=r"dup\.jsonl:2: field 'id': duplicate id '0'"):
        check(get_task("cb"), str(data), str(dup))


def test_percentiles_are_nearest_rank():
    values = list(range(1, 11))
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 100)) == (5, 9, 10)
    assert length_stats([])["chars"] == {"n": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}


def test_blind_generate_check_regenerate_merge_round_trip(tmp_path):
    """Blind teacher is wrong on some ids; check lists them; regenerating just those with a
    better teacher and merging with --replace yields a fully consistent file."""
    data = write_cb(tmp_path / "cb.jsonl", 9)
    task = get_task("cb")

    def answering(correct_for):
        def make(prompt):
            i = int(prompt.user.split("ID")[1].split()[0])
            label = CB_LABELS[i % 3] if correct_for(i) else CB_LABELS[(i + 1) % 3]
            return f"thinking about it\nAnswer: {label}\n[END OF REASONING]"
        return make

    first = GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), mode="blind", progress=False)
    run(first, FakeTeacher(answering(lambda i: i % 4 != 1)))  # wrong on 1 and 5
    assert main(["--task", "cb", "--input", str(data), "--rationales", first.out_path,
                 "--regenerate_ids", str(tmp_path / "ids.txt")]) == 0
    assert (tmp_path / "ids.txt").read_text().split() == ["1", "5"]
    again = GenerateConfig("cb", str(data), str(tmp_path / "r2.jsonl"), mode="blind",
                           ids_file=str(tmp_path / "ids.txt"), progress=False)
    assert run(again, FakeTeacher(answering(lambda i: True))).written == 2
    merge([first.out_path, again.out_path], str(tmp_path / "final.jsonl"), replace=True)
    report, _ = check(task, str(data), str(tmp_path / "final.jsonl"))
    assert (report.agree, report.disagree, report.rationales) == (9, 0, 9)
