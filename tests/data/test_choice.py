"""The multiple-choice formulation's data (dhrd.data.choice): one item per question
holding its option segments and its LM sequence, the collated contract (choice_index,
positions restarting per segment, no target across a segment boundary), whole questions
per optimizer step, the data report, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from dhrd.config import DataArgs
from dhrd.data.errors import DataError
from dhrd.data.order import CHOICE_COLUMNS, ROW_COLUMNS, collate
from dhrd.data.packing import IGNORE, collate_packed, plan_exact_steps
from dhrd.data.pipeline import build_training_set, sequence_spec
from dhrd.data.report import DataReport
from dhrd.data.sequences import SequenceBuilder
from dhrd.data.tasks import check_formulation, get_task
from tests.choice_helpers import choice_rows

CQA_ROW = {"id": "q1", "question": "Where do you keep milk?", "choices": ["fridge", "car", " shoe ", "sky", "bed"],
           "answer": "fridge"}


@pytest.fixture
def tok():
    """A fresh tokenizer: adding the reasoning tokens must not touch the session's one."""
    from tests.helpers import make_tiny_tokenizer

    return make_tiny_tokenizer()


def tiny_special(tokenizer):
    from dhrd.model.dual_head import add_reasoning_tokens
    from tests.helpers import tiny_backbone

    return add_reasoning_tokens(tokenizer, tiny_backbone("llama"))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def table_of(ds) -> dict:
    return {k: list(ds[k]) for k in (*ROW_COLUMNS, "length", *CHOICE_COLUMNS)}


def test_tasks_render_one_input_per_option():
    copa = get_task("copa")
    row = {"premise": "The man fell.", "choice1": " He slipped. ", "choice2": "He sang.", "question": "cause"}
    assert copa.render_options(row) == ["Premise: The man fell.\nWhat was the cause?\nAnswer: He slipped.",
                                        "Premise: The man fell.\nWhat was the cause?\nAnswer: He sang."]
    assert copa.render_options({**row, "question": "effect"})[1].split("\n")[1] == "What happened as a result?"
    with pytest.raises(DataError, match="question"):
        copa.render_options({**row, "question": "why"})
    assert get_task("cqa").render_options(CQA_ROW)[2] == "Question: Where do you keep milk?\nAnswer: shoe"
    check_formulation(copa, "choice")
    check_formulation(get_task("rte"), "classify")
    with pytest.raises(ValueError, match=r"task 'rte' has no answer options: --formulation choice .*\(copa, cqa\)"):
        check_formulation(get_task("rte"), "choice")
    with pytest.raises(ValueError, match="has no answer options"):
        get_task("boolq").render_options({"passage": "p", "question": "q"})
    with pytest.raises(ValueError, match="formulation='pick' is not one of classify, choice"):
        DataArgs(formulation="pick")


@pytest.mark.parametrize("with_reasoning", [True, False])
def test_a_question_is_its_options_then_its_lm_sequence(tmp_path, tok, with_reasoning):
    task = get_task("copa")
    rows = choice_rows(6)
    examples = task.read(write_rows(tmp_path / "copa.jsonl", rows))
    rats = write_rows(tmp_path / "r.jsonl", [{"id": str(r["idx"]), "rationale": "because it is good"} for r in rows])
    special = tiny_special(tok)
    args = DataArgs(task="copa", formulation="choice", rationale_file=str(rats), max_seq_len=128, pack_tokens=512)
    report = DataReport()
    ds, _ = build_training_set(task, examples, tok, special, args, with_reasoning=with_reasoning,
                               report=report)
    seq = SequenceBuilder(tok, *special, task.verbalizers, sequence_spec(args))
    for i, ex in enumerate(examples):
        options = [seq.input_ids(t)[0] for t in task.render_options(ex.fields)]
        want_ids, want_mask = sum(options, []), [0] * sum(map(len, options))
        lens = [len(o) for o in options]
        if with_reasoning:
            lm = seq.build(ex.text, "because it is good", ex.label)
            want_ids, want_mask, lens = want_ids + lm["input_ids"], want_mask + lm["lm_mask"], lens + [lm["length"]]
        assert ds[i]["input_ids"] == want_ids and ds[i]["lm_mask"] == want_mask and ds[i]["seg_lens"] == lens
        assert ds[i]["cls_pos"] == [sum(lens[:k + 1]) - 1 for k in range(2)]  # each option's last token
        assert ds[i]["label"] == rows[i]["label"] and ds[i]["length"] == sum(lens)
    counts = report.to_dict()["counts"]
    assert counts["choice_questions"] == 6 and counts["choice_option_sequences"] == 12
    assert counts["examples_with_rationale"] == (6 if with_reasoning else 0)


def test_collated_questions_keep_segments_apart(tmp_path, tok):
    task = get_task("copa")
    examples = task.read(write_rows(tmp_path / "copa.jsonl", choice_rows(5)))
    special = tiny_special(tok)
    args = DataArgs(task="copa", formulation="choice", max_seq_len=128, pack_tokens=512)
    table = table_of(build_training_set(task, examples, tok, special, args, with_reasoning=True)[0])
    b = collate([[0, 1, 2], [3, 4]], table, pad_id=0)
    assert b.choice_index.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert b.cls_labels.tolist() == [table["label"][i] for i in range(5)] and b.n_segments == 10
    T = b.input_ids.shape[1]
    flat_pos = b.position_ids.reshape(-1)
    starts = set(b.cls_start.tolist())
    for r, row in enumerate([[0, 1, 2], [3, 4]]):
        off = 0
        for i in row:
            for n in table["seg_lens"][i]:  # positions restart at every segment, options and LM sequence
                assert flat_pos[r * T + off:r * T + off + n].tolist() == list(range(n))
                assert b.lm_targets[r, off + n - 1] == IGNORE or off + n == T  # no target across a boundary
                off += n
        assert all(int(flat_pos[c]) == 0 for c in starts if c // T == r)
    pooled = b.input_ids.reshape(-1)[b.cls_index]
    assert (pooled != special[1]).all()  # the option ends pool, never the LM sequence's markers


def test_variable_option_counts_pad_the_choice_index():
    item = lambda k, n: {"input_ids": list(range(2, 2 + k * n)), "lm_mask": [0] * (k * n),  # noqa: E731
                         "cls_pos": [n * (j + 1) - 1 for j in range(k)], "seg_lens": [n] * k, "label": k - 1}
    b = collate_packed([[item(3, 4), item(2, 5)]], pad_id=0)
    assert b.choice_index.tolist() == [[0, 1, 2], [3, 4, -1]] and b.cls_labels.tolist() == [2, 1]
    assert b.cls_index.tolist() == [3, 7, 11, 16, 21] and b.cls_start.tolist() == [0, 4, 8, 12, 17]
    with pytest.raises(ValueError, match="seg_lens sum to 7, not its 8 tokens"):
        collate_packed([[{**item(2, 4), "seg_lens": [4, 3], "id": "q"}]], pad_id=0)


def test_steps_hold_whole_questions_deterministically(tmp_path, tok):
    """The data order counts questions: every step of exact batching is global_batch_size
    whole questions (each question's options together in one packed row), the same plan
    on every call, so resuming at step k replays the same questions."""
    task = get_task("copa")
    examples = task.read(write_rows(tmp_path / "copa.jsonl", choice_rows(20)))
    special = tiny_special(tok)
    args = DataArgs(task="copa", formulation="choice", max_seq_len=128, pack_tokens=512)
    table = table_of(build_training_set(task, examples, tok, special, args, with_reasoning=True)[0])
    steps = plan_exact_steps(table["length"], 6, 512, seed=3)
    assert steps == plan_exact_steps(table["length"], 6, 512, seed=3)
    seen = []
    for step in steps:
        questions = [i for micro in step for row in micro for i in row]
        assert len(questions) == min(6, 20 - len(seen))
        seen += questions
        for micro in step:
            b = collate(micro, table, pad_id=0)
            assert b.choice_index.shape == (sum(map(len, micro)), 2)
    assert sorted(seen) == list(range(20))


def test_a_question_over_the_pack_budget_is_named(tmp_path, tok):
    task = get_task("cqa")
    examples = task.read(write_rows(tmp_path / "cqa.jsonl", [CQA_ROW]))
    args = DataArgs(task="cqa", formulation="choice", max_seq_len=32, pack_tokens=32)
    with pytest.raises(ValueError, match=r"1 question\(s\) longer than --pack_tokens 32 \(first: id 'q1'"):
        build_training_set(task, examples, tok, tiny_special(tok), args)
    with pytest.raises(ValueError, match="task 'rte' has no answer options"):
        build_training_set(get_task("rte"), examples, tok, (0, 0), args)


def test_cls_labels_index_options_not_segments():
    b = collate_packed([[{"input_ids": [5, 6, 7, 8], "lm_mask": [0, 0, 0, 0], "cls_pos": [1, 3], "seg_lens": [2, 2],
                          "label": 1}]], pad_id=0, pad_to_multiple_of=1)
    assert torch.equal(b.position_ids, torch.tensor([[0, 1, 0, 1]])) and b.cls_labels.tolist() == [1]


def test_k_rationales_a_question_are_items_of_one_slot(tmp_path, tok):
    task = get_task("copa")
    rows = choice_rows(4)
    examples = task.read(write_rows(tmp_path / "copa.jsonl", rows))
    rats = write_rows(tmp_path / "r.jsonl", [{"id": str(r["idx"]), "rationales": ["first reason", "second one"]}
                                             for r in rows])
    args = DataArgs(task="copa", formulation="choice", rationale_file=str(rats), max_seq_len=128, pack_tokens=512)
    report = DataReport()
    ds, _ = build_training_set(task, examples, tok, tiny_special(tok), args, report=report)
    assert ds["slot"] == [0, 1, 2, 3, 0, 1, 2, 3] and ds["id"][4:] == ds["id"][:4]
    assert report.to_dict()["counts"]["choice_questions"] == 4
    assert ds[0]["input_ids"] != ds[4]["input_ids"] and ds[0]["seg_lens"][:2] == ds[4]["seg_lens"][:2]  # same options
