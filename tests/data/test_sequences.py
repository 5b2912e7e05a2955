"""Tokenised [x, <REASON>, r, <ANS>, y, eos] sequences: layout, LM sections,
truncation knobs, and the datasets.map cache."""

import json

import pytest

from dhrd.data.rationales import TrainItem
from dhrd.data.report import DataReport
from dhrd.data.sequences import SequenceBuilder, SequenceSpec, tokenize_items
from dhrd.data.tasks import Example
from dhrd.model.dual_head import add_reasoning_tokens
from tests.helpers import make_tiny_tokenizer, tiny_backbone


@pytest.fixture(scope="module")
def tok_ids():
    tok = make_tiny_tokenizer()
    return tok, add_reasoning_tokens(tok, tiny_backbone("llama"))


def builder(tok_ids, **spec):
    tok, (r, a) = tok_ids
    return SequenceBuilder(tok, r, a, ("yes", "no"), SequenceSpec(**spec))


def sections(row):
    return {k: tuple(v) for k, v in json.loads(row["spans"]).items()}


def test_layout_and_spans(tok_ids):
    tok, (reason_id, ans_id) = tok_ids
    row = builder(tok_ids).build("the premise", "because so", 1)
    ids, sp = row["input_ids"], sections(row)
    assert list(sp) == ["x", "reason", "rationale", "ans", "answer"]
    x = tok("the premise")["input_ids"]
    assert ids[: len(x)] == x and row["cls_pos"] == len(x) - 1
    assert ids[sp["reason"][0]] == reason_id and ids[sp["ans"][0]] == ans_id
    assert ids[slice(*sp["rationale"])] == tok(" because so", add_special_tokens=False)["input_ids"]
    assert ids[slice(*sp["answer"])] == tok(" no", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["length"] == len(ids) == len(row["lm_mask"]) and row["label"] == 1


@pytest.mark.parametrize("sections_,covered", [
    ("all", {"x", "reason", "rationale", "ans", "answer"}),
    ("rationale", {"rationale", "ans"}),
    ("rationale+answer", {"rationale", "ans", "answer"}),
])
def test_lm_sections(tok_ids, sections_, covered):
    row = builder(tok_ids, lm_sections=sections_).build("the premise", "because so", 0)
    mask = row["lm_mask"]
    for name, (a, b) in sections(row).items():
        want = int(name in covered)
        got = set(mask[a:b]) - ({0} if a == 0 else set())  # the first token is nobody's target
        assert got == {want} or (a == 0 and got <= {want}), name


def test_without_rationale_and_without_reasoning(tok_ids):
    row = builder(tok_ids).build("the premise", None, 0)
    assert list(sections(row)) == ["x", "ans", "answer"]
    row = builder(tok_ids, with_reasoning=False).build("the premise", "r", 0)
    assert list(sections(row)) == ["x"] and sum(row["lm_mask"]) == 0
    row = builder(tok_ids).build("the premise", "r", None)  # unlabeled: classifier input only
    assert list(sections(row)) == ["x"] and row["label"] == -100


def test_rationale_fraction_keeps_first_tokens(tok_ids):
    tok, _ = tok_ids
    text = "because so therefore the premise entails the hypothesis"
    full = tok(" " + text, add_special_tokens=False)["input_ids"]
    row = builder(tok_ids, rationale_fraction=0.5).build("x", text, 0)
    a, b = sections(row)["rationale"]
    assert row["input_ids"][a:b] == full[: -(-len(full) // 2)] and row["rationale_fraction_cut"] == 1


def test_truncation_to_fit(tok_ids):
    tok, _ = tok_ids
    long_x = "the premise " * 40
    row = builder(tok_ids, max_seq_len=64, max_input_len=32).build(long_x, "because " * 40, 0)
    assert row["input_truncated"] and row["rationale_cut"] > 0 and row["length"] <= 64
    assert row["input_ids"][0] == tok.bos_token_id  # left truncation keeps BOS
    assert row["input_ids"][row["cls_pos"]] == tok(long_x)["input_ids"][-1]  # and the end of x
    row = builder(tok_ids, max_seq_len=20, max_input_len=20).build(long_x, "r", 0)
    assert row["lm_dropped"] and list(sections(row)) == ["x"]


def test_tokenize_items_caches(tmp_path, tok_ids):
    items = [TrainItem(Example(str(i), f"premise {i}", i % 2), "because" if i % 3 else None) for i in range(20)]
    b = builder(tok_ids, max_seq_len=64, max_input_len=48)
    report = DataReport()
    ds = tokenize_items(items, b, cache_dir=str(tmp_path), report=report)
    assert len(ds) == 20 and ds[3]["id"] == "3" and report["input_truncated"] == 0
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 1

    def boom(*a, **k):
        raise AssertionError("cache miss: tokenised again")
    b.build = boom
    again = tokenize_items(items, b, cache_dir=str(tmp_path))
    assert again["input_ids"] == ds["input_ids"]


def test_batched_input_ids_equal_one_at_a_time(tok_ids):
    """The lean classifier's one-call encoding gives each text exactly ``input_ids``,
    left truncation included."""
    b = builder(tok_ids, max_seq_len=64, max_input_len=12)
    texts = ["short one", "the premise " * 20, "", "a b c d e f g h i j k l"]
    assert b.input_ids_batch(texts) == [b.input_ids(t)[0] for t in texts]
    assert b.input_ids_batch([]) == []


def test_k_rationales_become_rows_of_one_slot(tok_ids):
    items = [TrainItem(Example(str(i), f"premise {i}", i % 2), f"r{i}", tuple(f"alt{i}.{k}" for k in range(i % 3)))
             for i in range(6)]
    ds = tokenize_items(items, builder(tok_ids, max_seq_len=64, max_input_len=48))
    # rows 0..5 are the examples' first rationales, then the alternatives, each naming its example
    assert ds["slot"] == [0, 1, 2, 3, 4, 5, 1, 2, 2, 4, 5, 5]
    assert ds["id"][6:] == ["1", "2", "2", "4", "5", "5"]
    x_len = [ds["cls_pos"][j] for j in range(6)]
    assert [ds["cls_pos"][r] for r in range(6, 12)] == [x_len[s] for s in ds["slot"][6:]]  # the same x
