import json
import os

import datasets
import pytest

from dhrd.data.errors import DataError
from dhrd.data.tasks import TASKS, Example, get_task, read_examples


def write(path, rows):
    """JSON Lines; a str row is written as is (for malformed and blank lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def mrc_passage(pidx, questions):
    """A MultiRC line: questions = [(qidx, question, [(aidx, text, label), ...]), ...]."""
    return {"idx": pidx, "version": 1.1, "passage": {"text": f"Passage {pidx} about the river.", "questions": [
        {"question": q, "idx": qidx, "answers": [{"text": t, "idx": a, "label": lab} for a, t, lab in answers]}
        for qidx, q, answers in questions]}}


# Per task: rows in the real file format, then the expected ids, label names and the input
# strings each rendered x must contain.
FIXTURES = {
    "boolq": ([{"question": "is the river long", "passage": "The river is 300 km long.", "idx": 0, "label": True},
               {"question": "is the sky green?", "passage": "The sky is blue.", "idx": 1, "label": False},
               {"question": "can fish swim", "passage": "Fish swim in water.", "idx": 2, "label": True}],
              ["0", "1", "2"], ["true", "false", "true"],
              [["is the river long", "300 km"], ["is the sky green?", "sky is blue"], ["can fish swim"]]),
    "cb": ([{"premise": "She said it rained.", "hypothesis": "It rained", "label": "entailment", "idx": 0},
            {"premise": "He never left.", "hypothesis": "He left", "label": "contradiction", "idx": 1},
            {"premise": "Maybe he came.", "hypothesis": "He came", "label": "neutral", "idx": 2}],
           ["0", "1", "2"], ["entailment", "contradiction", "neutral"],
           [["She said it rained.", "It rained"], ["He never left."], ["Maybe he came."]]),
    "copa": ([{"premise": "My body cast a shadow.", "choice1": "The sun rose.", "choice2": "The grass was cut.",
               "question": "cause", "label": 0, "idx": 0},
              {"premise": "I dropped the glass.", "choice1": "It floated.", "choice2": "It broke.",
               "question": "effect", "label": 1, "idx": 1}],
             ["0", "1"], ["choice1", "choice2"],
             [["My body cast a shadow.", "The sun rose.", "The grass was cut.", "cause"],
              ["It floated.", "It broke.", "effect"]]),
    "multirc": ([mrc_passage(0, [(0, "Where is it?", [(0, "North", 1), (1, "South", 0)]),
                                 (1, "How long?", [(2, "300 km", 1)])]),
                 mrc_passage(1, [(2, "Who?", [(3, "Ann", 0)])])],
                ["0-0-0", "0-0-1", "0-1-2", "1-2-3"], ["true", "false", "true", "false"],
                [["Passage 0", "Where is it?", "North"], ["South"], ["How long?", "300 km"],
                 ["Passage 1", "Ann"]]),
    "rte": ([{"premise": "No weapons were found.", "hypothesis": "Weapons were found.",
              "label": "not_entailment", "idx": 0},
             {"premise": "Benedict is the new pope.", "hypothesis": "There is a new pope.",
              "label": "entailment", "idx": 7}],
            ["0", "7"], ["not_entailment", "entailment"],
            [["No weapons were found.", "Weapons were found."], ["Benedict is the new pope."]]),
    "wic": ([{"word": "place", "sentence1": "Come to my place.", "sentence2": "No place for them.", "idx": 0,
              "label": False, "start1": 12, "start2": 3, "end1": 17, "end2": 8, "version": 1.1},
             {"word": "hold", "sentence1": "Hold the line.", "sentence2": "Hold the taxi.", "idx": 1,
              "label": True, "start1": 0, "start2": 0, "end1": 4, "end2": 4, "version": 1.1}],
            ["0", "1"], ["false", "true"],
            [["place", "Come to my place.", "No place for them."], ["hold", "Hold the taxi."]]),
    "wsc": ([{"text": "Mark told Pete lies. He should have known.", "idx": 0, "label": False,
              "target": {"span2_index": 4, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"}},
             {"text": "I poured water into the cup until it was full.", "idx": 1, "label": True,
              "target": {"span2_index": 7, "span1_index": 4, "span1_text": "the cup", "span2_text": "it"}}],
            ["0", "1"], ["false", "true"],
            [["Mark told Pete lies.", '"He"', '"Mark"'], ['"it"', '"the cup"']]),
    "esnli": ([{"premise": "Two women embrace.", "hypothesis": "Two women hug.", "label": 0,
                "explanation_1": "Embrace is hug.", "explanation_2": "x", "explanation_3": "y"},
               {"premise": "A dog runs.", "hypothesis": "A dog sleeps.", "label": 2,
                "explanation_1": "a", "explanation_2": "b", "explanation_3": "c"},
               {"premise": "A man sings.", "hypothesis": "A man sings well.", "label": 1,
                "explanation_1": "a", "explanation_2": "b", "explanation_3": "c"}],
              ["0", "1", "2"], ["entailment", "contradiction", "neutral"],
              [["Two women embrace.", "Two women hug."], ["A dog sleeps."], ["A man sings well."]]),
    "sum4": ([{"idx": 0, "question": "Is 9 + 8 + 7 + 5 more than 20?", "label": "yes"},
              {"idx": 1, "question": "Is 1 + 2 + 3 + 4 more than 20?", "label": "no"}],
             ["0", "1"], ["yes", "no"], [["9 + 8 + 7 + 5"], ["1 + 2 + 3 + 4"]]),
    "anli1": ([{"uid": "bf62-a", "premise": "Linguistics studies language.", "hypothesis": "It studies form only.",
                "label": 2, "reason": "Context too."},
               {"uid": "e66a-b", "premise": "He was a senator.", "hypothesis": "He had a political career",
                "label": 0, "reason": "Senator."}],
              ["bf62-a", "e66a-b"], ["contradiction", "entailment"],
              [["Linguistics studies language.", "form only"], ["He was a senator."]]),
    "cqa": ([{"id": "6b81", "question": "10 apples, three fall. What is this?",
              "choices": ["park", "coloring book", "garden center", "math problem", "gravity"],
              "answer": "math problem", "abstractive_explanation": "a", "extractive_explanation": "b"},
             {"id": "3a1b", "question": "Where does the bum live?",
              "choices": ["bus depot", "beach", "train station", "bridge", "bridge"],
              "answer": "bridge", "abstractive_explanation": "a", "extractive_explanation": "b"}],
            ["6b81", "3a1b"], ["d", "d"],  # duplicate choice text: the first one
            [["10 apples", "(a) park", "(d) math problem", "(e) gravity"], ["(d) bridge", "(e) bridge"]]),
}


def test_registry():
    assert set(TASKS) == set(FIXTURES) == {"boolq", "cb", "copa", "multirc", "rte", "wic", "wsc", "esnli",
                                           "anli1", "cqa", "sum4"}
    assert get_task("RTE") is TASKS["rte"]
    with pytest.raises(ValueError, match="unknown task 'mnli'.*boolq.*cqa"):
        get_task("mnli")
    for task in TASKS.values():
        assert len(task.verbalizers) == len(task.labels) == len(set(task.labels))
        assert all(v and " " not in v for v in task.verbalizers)
        assert task.description and "\n" not in task.description
        assert (task.hub is None) == (task.name == "sum4")  # the generated fixture task has no hub data
    assert TASKS["cb"].metrics == ("macro_f1", "accuracy") and TASKS["multirc"].metrics == ("f1a", "em")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_read_every_task(tmp_path, name):
    rows, ids, labels, contains = FIXTURES[name]
    task = get_task(name)
    path = write(tmp_path / f"{name}.jsonl", rows[:1] + [""] + rows[1:])  # blank lines are skipped
    examples = read_examples(name, path)
    assert [e.id for e in examples] == ids
    assert [task.labels[e.label] for e in examples] == labels
    for ex, parts in zip(examples, contains):
        assert all(p in ex.text for p in parts), (ex.text, parts)
        assert ex.text == ex.text.strip() and ex.text.endswith(".")
        assert "Answer" in ex.text.splitlines()[-1]
        assert task.render(ex.fields) == ex.text  # stable, and fields are what render takes
        assert task.label_of(ex.fields) == ex.label
    assert task.read(path) == examples
    assert (examples[0].group is not None) == (name == "multirc")



@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_declared_fields_are_what_render_reads(tmp_path, name):
    """Task.fields (dhrd serve's row schema) names every field render reads, and no other."""
    task = get_task(name)
    example = read_examples(name, write(tmp_path / f"{name}.jsonl", FIXTURES[name][0][:1]))[0]
    row = {k: example.fields[k] for k in task.fields}
    assert task.render(row) == example.text
    for key in task.fields:
        with pytest.raises(DataError) as e:
            task.render({k: v for k, v in row.items() if k != key})
        assert e.value.field == key

def test_multirc_flattens_answers_grouped_by_question(tmp_path):
    rows = FIXTURES["multirc"][0]
    examples = get_task("multirc").read(write(tmp_path / "m.jsonl", rows))
    assert [e.group for e in examples] == ["0-0", "0-0", "0-1", "1-2"]
    assert examples[1].fields == {"passage": "Passage 0 about the river.", "question": "Where is it?",
                                  "answer": "South", "label": 0}


def test_rte_template_exactly(tmp_path):
    ex = get_task("rte").read(write(tmp_path / "r.jsonl", [{"premise": " P. ", "hypothesis": "H.", "idx": 0,
                                                             "label": "entailment"}]))[0]
    assert ex == Example("0", "Premise: P.\nHypothesis: H.\nDoes the premise entail the hypothesis? "
                              "Answer yes or no.", 0)


def test_unlabeled_rows(tmp_path):
    rows = [{"premise": "P.", "hypothesis": "H.", "idx": 0}, {"premise": "P.", "hypothesis": "H.", "idx": 1,
                                                              "label": "entailment"}]
    path = write(tmp_path / "test.jsonl", rows)
    assert [e.label for e in get_task("rte").read(path, require_labels=False)] == [None, 0]
    with pytest.raises(DataError, match="test.jsonl:1: field 'label': missing"):
        get_task("rte").read(path)
    mrc = mrc_passage(0, [(0, "Q?", [(0, "A", 1)])])
    del mrc["passage"]["questions"][0]["answers"][0]["label"]
    assert get_task("multirc").read(write(tmp_path / "m.jsonl", [mrc]), require_labels=False)[0].label is None


# --- scoring


def test_score_accuracy():
    assert get_task("rte").score([0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}


def test_score_cb_macro_f1_first():
    # per class F1: 2*2/(2+3), 2*1/(2+2), 2*1/(2+1) (see test_metrics)
    scores = get_task("cb").score([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2])
    assert list(scores) == ["macro_f1", "accuracy"]
    assert scores["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_score_multirc_f1a_and_em(tmp_path):
    # q 0-0: answers gold 1 0 1, all right; q 0-1: gold 1 0, first missed.
    rows = [mrc_passage(0, [(0, "Q1?", [(0, "a", 1), (1, "b", 0), (2, "c", 1)]),
                            (1, "Q2?", [(3, "d", 1), (4, "e", 0)])])]
    task = get_task("multirc")
    examples = task.read(write(tmp_path / "m.jsonl", rows))
    preds = [1, 0, 1, 0, 0]
    scores = task.score(preds, [e.label for e in examples], [e.group for e in examples])
    # F1a: 2 TP, 2 predicted, 3 gold -> 2*2/(2+3); EM: 1 of 2 questions
    assert scores == {"f1a": pytest.approx(0.8), "em": 0.5}
    with pytest.raises(ValueError, match="pass groups"):
        task.score(preds, [e.label for e in examples])


# --- bad input: every error names file, line and field

MRC_OK = mrc_passage(0, [(0, "Q?", [(0, "A", 1)])])
RTE_OK = {"premise": "P.", "hypothesis": "H.", "idx": 0, "label": "entailment"}


def mrc_without(*path):
    row = mrc_passage(1, [(0, "Q0?", [(0, "A", 1)]), (1, "Q1?", [(1, "B", 0), (2, "C", 1)])])
    obj = row
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]
    return row


BAD = [
    # (task, lines, line, field, message part)
    ("rte", [RTE_OK, "", '{"premise": "P.", '], 3, None, "malformed JSON"),
    ("rte", [RTE_OK, "[1, 2]"], 2, None, "expected a JSON object, got an array"),
    ("rte", [RTE_OK, {"premise": "P.", "idx": 1, "label": "entailment"}], 2, "hypothesis", "missing"),
    ("multirc", [MRC_OK, mrc_without("passage", "questions", 1, "answers", 0, "label")], 2,
     "passage.questions[1].answers[0].label", "missing"),
    ("multirc", [mrc_without("passage", "questions", 1, "question")], 1, "passage.questions[1].question",
     "missing"),
    ("multirc", [mrc_without("passage", "questions", 0, "answers", 0, "idx")], 1,
     "passage.questions[0].answers[0].idx", "missing"),
    ("multirc", [{"idx": 0, "passage": {"text": "T", "questions": {}}}], 1, "passage.questions",
     "expected an array, got an object"),
    ("multirc", [{"idx": 0, "passage": {"text": "T", "questions": ["q"]}}], 1, "passage.questions[0]",
     "expected an object, got a string"),
    ("multirc", [mrc_passage(0, [(0, "Q?", [(0, "A", 1), (0, "B", 0)])])], 1,
     "passage.questions[0].answers[1].idx", "duplicate id '0-0-0' (first on line 1)"),
    ("multirc", [mrc_passage(0, [(0, "Q?", [(0, "A", 2)])])], 1, "passage.questions[0].answers[0].label",
     "unknown label 2; expected one of 0, 1"),
    ("wsc", [{"text": "He ran.", "idx": 0, "label": True, "target": {"span2_text": "He"}}], 1,
     "target.span1_text", "missing"),
    ("rte", [{"premise": 5, "hypothesis": "H.", "idx": 0, "label": "entailment"}], 1, "premise",
     "expected a string, got an integer"),
    ("rte", [{"premise": "P.", "hypothesis": "H.", "idx": 1.5, "label": "entailment"}], 1, "idx",
     "expected an integer or a string, got a number"),
    ("boolq", [{"question": "q", "passage": "p", "idx": 0, "label": "true"}], 1, "label",
     'unknown label "true" (a string); expected one of false, true'),
    ("copa", [{"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": True,
               "idx": 0}], 1, "label", "unknown label true (a boolean); expected one of 0, 1"),
    ("copa", [{"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "why", "label": 0, "idx": 0}], 1,
     "question", 'expected "cause" or "effect"'),
    ("cb", [{"premise": "P.", "hypothesis": "H.", "idx": 0, "label": "entailment"},
            {"premise": "P.", "hypothesis": "H.", "idx": 1, "label": "maybe"}], 2, "label",
     'unknown label "maybe"; expected one of "entailment", "contradiction", "neutral"'),
    ("rte", [RTE_OK, "", RTE_OK], 3, "idx", "duplicate id '0' (first on line 1)"),
    ("anli1", [{"uid": "u", "premise": "P.", "hypothesis": "H.", "label": 0}] * 2, 2, "uid", "duplicate id 'u'"),
    ("esnli", [{"premise": "P.", "hypothesis": "H.", "label": 3}], 1, "label", "unknown label 3"),
    ("cqa", [{"id": "x", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "a"}], 1, "choices",
     "expected 5 choices, got 4"),
    ("cqa", [{"id": "x", "question": "Q?", "choices": ["a", "b", "c", "d", 5], "answer": "a"}], 1, "choices[4]",
     "expected a string, got an integer"),
    ("cqa", [{"id": "x", "question": "Q?", "choices": ["a", "b", "c", "d", "e"], "answer": "f"}], 1, "answer",
     'unknown label "f"; expected one of "a", "b", "c", "d", "e"'),
    ("cqa", [{"id": "x", "question": "Q?", "choices": ["a", "b", "c", "d", "e"]}], 1, "answer", "missing"),
]


@pytest.mark.parametrize("name,lines,line,field,message", BAD)
def test_bad_input_names_file_line_and_field(tmp_path, name, lines, line, field, message):
    path = write(tmp_path / f"bad_{name}.jsonl", lines)
    with pytest.raises(DataError) as err:
        get_task(name).read(path)
    e = err.value
    assert (e.line, e.field) == (line, field)
    assert f"bad_{name}.jsonl:{line}:" in str(e) and message in str(e)
    assert field is None or f"field '{field}'" in str(e)


@pytest.mark.parametrize("lines", [[], ["", "  "]])
def test_empty_file(tmp_path, lines):
    with pytest.raises(DataError, match=r"empty\.jsonl: no examples"):
        get_task("rte").read(write(tmp_path / "empty.jsonl", lines))


def test_reads_utf8(tmp_path):
    path = tmp_path / "u.jsonl"
    row = {"premise": "Pāṇini wrote it.", "hypothesis": "H.", "idx": 0, "label": "entailment"}
    path.write_bytes(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    assert "Pāṇini" in get_task("rte").read(path)[0].text


# --- hub: rows adapted to the local format (no network: load_dataset is replaced)


@pytest.fixture
def hub(monkeypatch):
    """Serve hand-written hub-shaped rows; record what load_dataset was asked for."""
    served = {"rows": [], "calls": []}

    def load_dataset(name, config=None, *, split):
        served["calls"].append((name, config, split))
        return served["rows"]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return served


@pytest.mark.parametrize("name,row,label", [
    ("boolq", {"question": "q", "passage": "p", "idx": 0, "label": 1}, True),
    ("cb", {"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 2}, "neutral"),
    ("copa", {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "effect", "idx": 0, "label": 1}, 1),
    ("rte", {"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 1}, "not_entailment"),
    ("wic", {"word": "w", "sentence1": "s1", "sentence2": "s2", "start1": 0, "start2": 0, "end1": 1, "end2": 1,
             "idx": 0, "label": 0}, False),
    ("esnli", {"premise": "P.", "hypothesis": "H.", "label": 1, "explanation_1": "e", "explanation_2": "",
               "explanation_3": ""}, 1),
])
def test_hub_rows_with_int_labels(hub, name, row, label):
    task = get_task(name)
    hub["rows"] = [row]
    [ex] = task.load_hub("train")
    assert hub["calls"] == [(*task.hub, "train")]
    assert ex.fields["label"] == label and type(ex.fields["label"]) is type(label)
    assert ex.label == row["label"]  # label indices follow the hub's
    assert ex.id == "0" and ex.text == task.render(ex.fields)


def test_hub_multirc_flat_rows(hub):
    def row(p, q, a, label):
        return {"paragraph": f"Passage {p}.", "question": f"Q{q}?", "answer": f"A{a}",
                "idx": {"paragraph": p, "question": q, "answer": a}, "label": label}

    hub["rows"] = datasets.Dataset.from_list([row(0, 0, 0, 1), row(0, 0, 1, 0), row(0, 1, 2, 1), row(1, 2, 3, 0)])
    examples = get_task("multirc").load_hub("validation")
    assert hub["calls"] == [("aps/super_glue", "multirc", "validation")]
    assert [(e.id, e.group, e.label) for e in examples] == [("0-0-0", "0-0", 1), ("0-0-1", "0-0", 0),
                                                            ("0-1-2", "0-1", 1), ("1-2-3", "1-2", 0)]
    assert examples[2].fields == {"passage": "Passage 0.", "question": "Q1?", "answer": "A2", "label": 1}


def test_hub_wsc_nests_spans(hub):
    hub["rows"] = [{"text": "Mark lied. He knew.", "span1_index": 0, "span2_index": 2, "span1_text": "Mark",
                    "span2_text": "He", "idx": 3, "label": 1}]
    [ex] = get_task("wsc").load_hub("train")
    assert ex.fields["target"] == {"span1_text": "Mark", "span2_text": "He", "span1_index": 0, "span2_index": 2}
    assert (ex.id, ex.label) == ("3", 1) and '"He" refer to "Mark"' in ex.text


def test_hub_cqa_answer_key(hub):
    choices = {"label": ["A", "B", "C", "D", "E"], "text": ["park", "book", "garden", "math", "gravity"]}
    hub["rows"] = [{"id": "q1", "question": "What?", "question_concept": "c", "choices": choices,
                    "answerKey": "D"},
                   {"id": "q2", "question": "Which?", "question_concept": "c", "choices": choices,
                    "answerKey": ""}]
    examples = get_task("cqa").load_hub("test", require_labels=False)
    assert [(e.id, e.label) for e in examples] == [("q1", 3), ("q2", None)]
    assert examples[0].fields["answer"] == "math" and "(d) math" in examples[0].text


def test_hub_anli_split_names(hub):
    hub["rows"] = [{"uid": "u1", "premise": "P.", "hypothesis": "H.", "label": 2, "reason": "r"}]
    assert get_task("anli1").load_hub("train")[0].id == "u1"
    get_task("anli1").load_hub("dev_r1")
    assert hub["calls"] == [("facebook/anli", None, "train_r1"), ("facebook/anli", None, "dev_r1")]


def test_hub_unlabeled_rows(hub):
    hub["rows"] = [{"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 0},
                   {"premise": "P.", "hypothesis": "H.", "idx": 1, "label": -1}]
    assert [e.label for e in get_task("rte").load_hub("test", require_labels=False)] == [0, None]
    with pytest.raises(DataError, match=r"aps/super_glue/rte\[test\]:2: field 'label': missing"):
        get_task("rte").load_hub("test")


def test_load_examples_routes_paths_and_hub_splits(tmp_path, monkeypatch):
    from dhrd.data import pipeline

    path = tmp_path / "rte.jsonl"
    path.write_text('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n')
    task = get_task("rte")
    assert [e.id for e in pipeline.load_examples(task, str(path))] == ["0"]
    seen = {}
    monkeypatch.setattr(type(task), "load_hub",
                        lambda self, split, require_labels=True: seen.setdefault("split", split))
    pipeline.load_examples(task, "hub:validation")
    assert seen["split"] == "validation"


def test_unreachable_hub_names_the_dataset_and_the_way_out(monkeypatch):
    def offline(name, config=None, *, split):
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"hub dataset aps/super_glue/rte\[train\] could not be loaded "
                                         r"\(ConnectionError: .*\); .*local JSONL file .* instead of hub:train"):
        get_task("rte").load_hub("train")


SITECUSTOMIZE = """
import json, os
import datasets

def load_dataset(name, config=None, *, split):  # the hub, served from a local file (no network)
    assert (name, config) == ("aps/super_glue", "rte"), (name, config)
    with open(os.path.join(os.environ["FAKE_HUB"], split + ".jsonl")) as f:
        return [json.loads(line) for line in f]

datasets.load_dataset = load_dataset
"""


def test_training_reads_hub_splits(tmp_path):
    """``--train_file hub:train --eval_file hub:validation`` (documented, and once stopped at
    'train file not found: hub:train') trains through the one data path."""
    import subprocess
    import sys

    from tests.distributed.train_helpers import REPO, child_env, write_model

    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    for split, n in (("train", 24), ("validation", 8)):
        rows = [{"premise": f"the sky is {'blue' if i % 2 else 'green'}", "hypothesis": "the sky is blue",
                 "idx": i, "label": 0 if i % 2 else 1} for i in range(n)]
        (hub_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = child_env()
    env["PYTHONPATH"] = str(tmp_path / "site") + os.pathsep + env["PYTHONPATH"]
    env["FAKE_HUB"] = str(hub_dir)
    cmd = [sys.executable, os.path.join(REPO, "dhrd", "train.py"), "--model", write_model(tmp_path / "m"),
           "--task", "rte", "--train_file", "hub:train", "--eval_file", "hub:validation", "--method", "pooled",
           "--max_steps", "2", "--global_batch_size", "4", "--pack_tokens", "128", "--max_seq_len", "128",
           "--output_dir", str(tmp_path / "out"), "--progress", "false", "--export_final", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["counts"]["examples_read"] == 24
    assert len((tmp_path / "out" / "eval_predictions.jsonl").read_text().splitlines()) == 8
