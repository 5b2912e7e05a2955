"""Import of the Distilling Step-by-Step release format (fixtures written here: rows as
JSON Lines, continuations as JSON arrays split over files of unequal size)."""

import json

import pytest

from dhrd.data.errors import DataError
from dhrd.data.rationales import read_rationales
from dhrd.data.tasks import get_task
from dhrd.teacher.palm_cot import import_human, import_palm_cot, main, parse_continuation
from tests.teacher.teacher_helpers import read_jsonl

CHOICES = ["park", "coloring book", "garden center", "math problem", "gravity"]
CQA = [  # (answer, continuation)
    ("math problem",
     "Only a math problem fits. So the answer is (d) math problem.\n\nQ: made up?\nA: So the answer is (a)."),
    ("park", "Kids play in a park. So the answer is (a) park.\n\nQ: another"),
    ("gravity", "Things fall. So the answer is (c) garden center.\n\n"),            # disagrees
    ("park", "Hmm. So the answer is either (a) park or (e) gravity.\n\nQ: x"),     # unparsable
    ("coloring book", "Crayons go on pages. So the answer is coloring book."),    # the choice text
]
ESNLI = [  # (label, continuation)
    (1, "The to go packages may not be from lunch.\nAnswer: neutral\n\nPremise: invented\nAnswer: entailment"),
    (0, "Holding packages paraphrases it.\nAnswer: entailment\n\n"),
    (2, "Women are not men.\nAnswer: neutral\n\nPremise: x"),                      # disagrees
]


def write_set(root, name, split, rows, continuations, sizes):
    (root / name / "llm").mkdir(parents=True)
    with open(root / name / f"{name}_{split}.json", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    start = 0
    for k, size in enumerate(sizes):
        (root / name / "llm" / f"{split}_CoT_{k}.json").write_text(json.dumps(continuations[start:start + size]))
        start += size


@pytest.fixture
def root(tmp_path):
    cqa_rows = [{"id": f"q{i}", "question": f"question {i}?", "choices": CHOICES, "answer": a,
                 "abstractive_explanation": f"human says {i}" if i != 1 else ""} for i, (a, _) in enumerate(CQA)]
    write_set(tmp_path, "cqa", "train", cqa_rows, [c for _, c in CQA], sizes=(3, 2))
    esnli_rows = [{"premise": "p", "hypothesis": "h", "label": lab, "explanation_1": f"e{i}"}
                  for i, (lab, _) in enumerate(ESNLI)]
    write_set(tmp_path, "esnli", "valid", esnli_rows, [c for _, c in ESNLI], sizes=(1, 2))
    return tmp_path


def test_parse_cuts_at_the_first_blank_line():
    task = get_task("esnli")
    assert parse_continuation(task, ESNLI[0][1]) == ("The to go packages may not be from lunch.", 1, "neutral")
    assert parse_continuation(task, "\n\nruns on with no answer") == ("runs on with no answer", None, None)


def test_cqa_import_aligns_ids_parses_labels_and_counts_agreement(root):
    result = import_palm_cot("cqa", str(root / "cqa/cqa_train.json"), str(root / "cqa/llm"), "train")
    recs = {r["id"]: r for r in result.records}
    assert list(recs) == ["q0", "q1", "q2", "q3", "q4"]
    assert recs["q0"]["rationale"] == "Only a math problem fits." and recs["q0"]["teacher_label"] == "d"
    assert [recs[i]["teacher_label"] for i in recs] == ["d", "a", "c", None, "b"]
    assert [recs[i]["gold_label"] for i in recs] == ["d", "a", "e", "a", "b"]
    a = result.agreement()
    assert (a["agree"], a["disagree"], a["unparsed"], a["agreement"]) == (3, 1, 1, 0.6)
    assert result.report["teacher_label_unparsed"] == 1


def test_esnli_ids_are_row_numbers_and_the_output_reads_back(root, tmp_path, capsys):
    out = tmp_path / "esnli.jsonl"
    assert main(["--task", "esnli", "--root", str(root), "--split", "valid", "--out", str(out), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "esnli: 2/3 rows agree with the gold label = 66.67%" in printed
    rows = read_jsonl(out)
    assert [(r["id"], r["teacher_label"]) for r in rows] == [("0", "neutral"), ("1", "entailment"), ("2", "neutral")]
    assert all(r["teacher"] == "palm-540b" and r["prompt_version"] == "dss-palm-cot" for r in rows)
    rats = read_rationales(out, get_task("esnli").labels)  # the training pipeline's reader accepts it
    assert rats["0"].text == "The to go packages may not be from lunch."


def test_human_explanations(root, tmp_path):
    result = import_human("cqa", str(root / "cqa/cqa_train.json"), "abstractive_explanation", "human:cos-e")
    assert [r["id"] for r in result.records] == ["q0", "q2", "q3", "q4"]  # q1's is empty: reported
    assert result.report["skipped/abstractive_explanation_missing_or_empty"] == 1
    assert result.records[0] == {"id": "q0", "rationale": "human says 0", "teacher_label": None,
                                 "teacher": "human:cos-e", "prompt_version": "human:abstractive_explanation",
                                 "gold_label": "d"}


def test_count_mismatch_and_missing_file_are_clear_errors(root):
    extra = json.loads((root / "cqa/llm/train_CoT_1.json").read_text()) + ["one too many"]
    (root / "cqa/llm/train_CoT_1.json").write_text(json.dumps(extra))
    with pytest.raises(DataError, match=r"6 teacher continuations in 2 file\(s\) \(train_CoT_0.json: 3, "
                                        r"train_CoT_1.json: 3\) but 5 examples"):
        import_palm_cot("cqa", str(root / "cqa/cqa_train.json"), str(root / "cqa/llm"), "train")
    (root / "cqa/llm/train_CoT_1.json").rename(root / "cqa/llm/train_CoT_2.json")
    with pytest.raises(DataError, match=r"missing train_CoT_<k>.json for k = \[1\]"):
        import_palm_cot("cqa", str(root / "cqa/cqa_train.json"), str(root / "cqa/llm"), "train")
    (root / "cqa/llm/train_CoT_0.json").write_text('{"not": "an array"}')
    (root / "cqa/llm/train_CoT_2.json").rename(root / "cqa/llm/train_CoT_1.json")
    with pytest.raises(DataError, match="train_CoT_0.json: expected a JSON array"):
        import_palm_cot("cqa", str(root / "cqa/cqa_train.json"), str(root / "cqa/llm"), "train")


def test_dhrd_rationales_dispatches_to_the_subcommands(root, tmp_path, capsys):
    from dhrd.cli import main as dhrd_main

    out = tmp_path / "via-cli.jsonl"
    assert dhrd_main(["rationales", "import", "--task", "esnli", "--root", str(root), "--split", "valid",
                      "--out", str(out)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["0", "1", "2"]
    assert dhrd_main(["rationales", "nonsense"]) == 2
    assert "generate" in capsys.readouterr().out


def test_a_cot_file_nested_too_deeply_is_one_line_naming_it(root, tmp_path, capsys):
    from dhrd.cli import main as dhrd_main

    (root / "esnli/llm/valid_CoT_0.json").write_text("[" * 100000 + "]" * 100000)
    assert dhrd_main(["rationales", "import", "--task", "esnli", "--root", str(root), "--split", "valid",
                      "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid_CoT_0.json: malformed JSON (JSON nested too deeply" in err, err
