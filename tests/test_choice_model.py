"""The multiple-choice head (DualHeadModel with ``choice``): a question's option scores in
one packed batch equal each option scored alone, for every architecture and attention
path; padded option slots carry no weight; a tiny model learns a choice task through
the engine's loss module, with the LM term off (pooled) and on (dhrd)."""

from __future__ import annotations

import json

import pytest
import torch

from dhrd.data.packing import collate_packed
from dhrd.model.dual_head import DualHeadModel, choice_scores
from tests.helpers import ARCHS, make_tiny_tokenizer, tiny_backbone


def question(n_options: int, rng: torch.Generator, lm: bool, vocab: int = 300) -> dict:
    """A question item: options of random tokens, then (``lm``) an LM sequence."""
    options = [torch.randint(2, vocab, (int(torch.randint(3, 9, (1,), generator=rng)),), generator=rng).tolist()
               for _ in range(n_options)]
    ids = sum(options, [])
    lens = [len(o) for o in options]
    mask = [0] * len(ids)
    if lm:
        seq = torch.randint(2, vocab, (10,), generator=rng).tolist()
        ids, lens, mask = ids + seq, lens + [len(seq)], mask + [0] + [1] * 9
    return {"input_ids": ids, "lm_mask": mask, "seg_lens": lens, "label": n_options - 1,
            "cls_pos": [sum(lens[:k + 1]) - 1 for k in range(n_options)], "options": options}


def score_alone(model, option: list[int]) -> torch.Tensor:
    b = collate_packed([[{"input_ids": option, "lm_mask": [0] * len(option), "cls_pos": len(option) - 1,
                          "label": 0}]], pad_id=0, pad_to_multiple_of=1)
    return model(b.input_ids, b.position_ids, b.cls_index, b.cls_start).cls_logits[0, 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "dhrd_segments"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_option_scores_equal_each_option_alone(arch, attn):
    rng = torch.Generator().manual_seed(0)
    model = DualHeadModel(tiny_backbone(arch, attn), num_labels=5, choice=True).eval()
    items = [question(k, rng, lm=k % 2 == 0) for k in (2, 5, 3, 4)]
    b = collate_packed([items[:2], items[2:]], pad_id=0)  # 2 rows; variable option counts; LM sequences between
    with torch.no_grad():
        packed = model(b.input_ids, b.position_ids, b.cls_index, b.cls_start, choice_index=b.choice_index).cls_logits
        assert packed.shape == (4, 5)
        for q, item in enumerate(items):
            alone = torch.stack([score_alone(model, o) for o in item["options"]])
            torch.testing.assert_close(packed[q, :len(alone)], alone, atol=1e-5, rtol=0)
            assert torch.isneginf(packed[q, len(alone):]).all()


def test_padded_option_slots_carry_no_weight():
    """Cross-entropy over [Q, K] with -inf padding equals cross-entropy over each question's
    own options; gradients stay finite and the padded slots get none."""
    scores = torch.randn(5, 1, requires_grad=True)
    index = torch.tensor([[0, 1, 2], [3, 4, -1]])
    logits = choice_scores(scores, index)
    labels = torch.tensor([2, 0])
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    flat = scores[:, 0]
    want = (torch.nn.functional.cross_entropy(flat[:3][None], labels[:1], reduction="sum")
            + torch.nn.functional.cross_entropy(flat[3:5][None], labels[1:], reduction="sum"))
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one score per option, the head gives 3"):
        choice_scores(torch.zeros(5, 3), index)


def _setup(tmp_path, tokenizer, with_reasoning: bool):
    from dhrd.config import DataArgs
    from dhrd.data.order import CHOICE_COLUMNS, ROW_COLUMNS
    from dhrd.data.pipeline import build_training_set
    from dhrd.data.tasks import get_task
    from dhrd.model.dual_head import add_reasoning_tokens
    from tests.choice_helpers import write_choice_task

    paths = write_choice_task(tmp_path, n_train=64, n_eval=32)
    task, backbone = get_task("copa"), tiny_backbone("llama", "sdpa", seed=1).train()
    special = add_reasoning_tokens(tokenizer, backbone)
    args = DataArgs(task="copa", formulation="choice", rationale_file=paths["rationales"], max_seq_len=128,
                    pack_tokens=512)
    tables = []
    for split, reasoning in (("train", with_reasoning), ("eval", False)):
        ds, _ = build_training_set(task, task.read(paths[split]), tokenizer, special, args, with_reasoning=reasoning)
        tables.append({k: list(ds[k]) for k in (*ROW_COLUMNS, "length", *CHOICE_COLUMNS)})
    torch.manual_seed(0)
    return DualHeadModel(backbone, 2, head="linear", choice=True), tables


def _accuracy(wrapper, table) -> float:
    from dhrd.data.order import collate, model_inputs

    with torch.no_grad():
        b = collate([list(range(len(table["label"])))], table, pad_id=0)
        logits = wrapper(**model_inputs(b, "cpu")).cls_logits
    return float((logits.argmax(-1) == b.cls_labels).float().mean())


@pytest.mark.parametrize("alpha", [0.0, 1.0], ids=["pooled", "dhrd"])
def test_a_tiny_model_learns_a_choice_task(tmp_path, alpha):
    """25 steps of 8 questions through the engine's loss module (DualHeadLoss): the choice
    loss falls from about ln 2, held-out accuracy ends far above chance (0.5); with alpha 1 the
    LM term (one sequence per question) trains too."""
    from dhrd.data.order import batch_inputs, collate
    from dhrd.loss import DualHeadLoss

    model, (train, dev) = _setup(tmp_path, make_tiny_tokenizer(), with_reasoning=alpha > 0)
    wrapper = DualHeadLoss(model, beta=1.0, impl="reference")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    cls, lm = [], []
    for _ in range(25):
        b = collate([torch.randperm(64, generator=g)[:8].tolist()], train, pad_id=0)
        total, c, m = wrapper(**batch_inputs(b, "cpu"), alpha=alpha, n_lm_tokens=max(b.n_lm_tokens, 1), n_cls=8)
        opt.zero_grad()
        total.backward()
        opt.step()
        cls.append(float(c))
        lm.append(float(m))
    assert cls[0] > 0.5 and sum(cls[-5:]) / 5 < 0.2, json.dumps(cls)  # from about ln 2 (no preference)
    assert _accuracy(wrapper, dev) >= 0.85
    if alpha:
        assert sum(lm[-5:]) / 5 < sum(lm[:5]) / 5 - 0.5
        assert b.n_lm_tokens > 0
    else:
        assert all(v == 0.0 for v in lm) and b.n_lm_tokens == 0
