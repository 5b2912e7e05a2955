"""CoT-decoding evaluation against a plain reference: greedy decoding one example at a
time with full forwards (no cache, no padding), then each verbalizer's log-likelihood."""

from __future__ import annotations

import pytest
import torch

from dhrd.engine.cot_eval import cot_batches, cot_predict
from tests.helpers import tiny_backbone

REASON, ANS, PAD, EOS = 300, 301, 0, 2
ANSWERS = [[40, 41], [57, 58, 59]]  # verbalizers of different lengths


def reference(model, x, max_new):
    seq = list(x) + [REASON]
    rationale, finished = [], False
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in (ANS, EOS):
                finished = nxt == ANS
                break
            rationale.append(nxt)
            seq.append(nxt)
        scores = []
        for a in ANSWERS:
            full = seq + [ANS] + a
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1)
            start = len(seq) + 1
            scores.append(sum(float(logp[j - 1, full[j]]) for j in range(start, len(full))))
    return int(torch.tensor(scores).argmax()), rationale, finished, scores


def model_with_ans_bias(bias: float):
    """A tiny Llama whose LM head favours <ANS> by ``bias`` (a real bias term), so some
    rationales end with <ANS> and some run to the limit."""
    model = tiny_backbone("llama", attn="dhrd_segments").double()
    head = model.get_output_embeddings()
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=torch.float64)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
        new.bias[ANS] = bias
    model.set_output_embeddings(new)
    return model


@pytest.mark.parametrize("bias", [0.0, 0.2, 50.0])
def test_batched_cached_decoding_matches_the_reference(bias):
    torch.manual_seed(1)
    model = model_with_ans_bias(bias)
    inputs = [[1] + torch.randint(3, 290, (n,)).tolist() for n in (5, 9, 3, 12, 7)]
    got = cot_predict(model, inputs, ANSWERS, reason_id=REASON, ans_id=ANS, pad_id=PAD, eos_id=EOS,
                      max_new_tokens=6, device="cpu")
    want = [reference(model, x, 6) for x in inputs]
    assert got.predictions == [w[0] for w in want]
    assert got.rationales == [w[1] for w in want]
    assert got.finished == [w[2] for w in want]
    assert torch.allclose(torch.tensor(got.scores), torch.tensor([w[3] for w in want]), rtol=0, atol=1e-9)
    if bias == 50.0:
        assert all(got.finished) and not any(got.rationales)  # <ANS> at once


def test_some_rationales_finish_and_some_do_not():
    """The middle bias really exercises both paths in one batch."""
    torch.manual_seed(1)
    model = model_with_ans_bias(0.2)
    inputs = [[1] + torch.randint(3, 290, (n,)).tolist() for n in (5, 9, 3, 12, 7, 4, 10, 6)]
    got = cot_predict(model, inputs, ANSWERS, reason_id=REASON, ans_id=ANS, pad_id=PAD, eos_id=EOS,
                      max_new_tokens=6, device="cpu")
    assert any(got.finished) and not all(got.finished), got.finished


def test_batches_group_similar_lengths_and_cover_everything():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    batches = cot_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[lengths[i] for i in b] for b in batches] == [[1, 2, 3], [5, 7, 8], [9]]
