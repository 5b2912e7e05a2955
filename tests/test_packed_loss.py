"""Model + reference loss on a packed batch equals the examples run one by one and
summed with the same (global) normalisation: loss and every parameter gradient."""

import pytest
import torch

from dhrd.data.packing import collate_packed
from dhrd.loss import reference_dual_head_loss
from dhrd.model.dual_head import DualHeadModel
from tests.helpers import tiny_backbone


def make_segments():
    g = torch.Generator().manual_seed(1)
    segs = []
    for i, n in enumerate([9, 6, 11, 4, 8]):
        ids = torch.randint(2, 300, (n,), generator=g).tolist()
        # x = first half (not supervised), rest supervised; one segment has no LM tokens
        mask = [0] * (n // 2) + [1] * (n - n // 2) if i != 3 else [0] * n
        segs.append({"input_ids": ids, "lm_mask": mask, "cls_pos": n // 2 - 1, "label": i % 3})
    return segs


def loss_and_grads(model, batches, n_lm, n_cls, alpha, beta):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        out = model(**vars(batch))
        loss = reference_dual_head_loss(out.hidden, model.lm_weight, batch.lm_targets, out.cls_logits,
                                        batch.cls_labels, alpha=alpha, beta=beta, n_lm_tokens=n_lm,
                                        n_cls=n_cls, logit_softcap=model.logit_softcap)
        loss.total.backward()
        total += loss.total.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # untied / tied + softcap
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.0)])
def test_packed_equals_one_by_one(arch, alpha, beta):
    torch.manual_seed(0)
    kw = {"final_logit_softcapping": 5.0} if arch == "gemma3_text" else {}
    model = DualHeadModel(tiny_backbone(arch, "sdpa", **kw), num_labels=3, pooling="last").double()
    segs = make_segments()
    packed = [collate_packed([segs[:3], segs[3:]], pad_id=0)]
    alone = [collate_packed([[s]], pad_id=0) for s in segs]
    n_lm = sum(b.n_lm_tokens for b in alone)
    assert n_lm == packed[0].n_lm_tokens > 0
    n_cls = len(segs)
    l_packed, g_packed = loss_and_grads(model, packed, n_lm, n_cls, alpha, beta)
    l_alone, g_alone = loss_and_grads(model, alone, n_lm, n_cls, alpha, beta)
    assert l_packed == pytest.approx(l_alone, rel=1e-10)
    assert g_packed.keys() == g_alone.keys()
    for name in g_packed:
        # Gemma norms compute in fp32
        torch.testing.assert_close(g_packed[name], g_alone[name], rtol=1e-6, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in g_packed.values())


def test_micro_batches_with_global_count_equal_one_batch():
    """Splitting an optimizer step into micro-batches (or ranks) changes nothing when the
    LM term is divided by the global supervised-token count."""
    model = DualHeadModel(tiny_backbone("llama"), num_labels=3).double()
    segs = make_segments()
    one = [collate_packed([segs], pad_id=0)]
    split = [collate_packed([segs[:2]], pad_id=0), collate_packed([segs[2:]], pad_id=0)]
    l1, g1 = loss_and_grads(model, one, one[0].n_lm_tokens, 5, 1.0, 1.0)
    l2, g2 = loss_and_grads(model, split, one[0].n_lm_tokens, 5, 1.0, 1.0)
    assert l1 == pytest.approx(l2, rel=1e-10)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-8, atol=1e-10)
