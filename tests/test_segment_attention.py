"""dhrd_segments attention: per-segment causal sdpa for packed rows, sdpa's own path
for everything else; outputs equal sdpa's on every supported architecture."""
from __future__ import annotations

import pytest
import torch

from dhrd.model import segment_attention as sa
from tests.helpers import ARCHS, tiny_backbone


def test_segment_bounds_follow_position_restarts():
    pos = torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 3])
    assert sa.segment_bounds(pos) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    assert sa.segment_bounds(torch.arange(5)) == [(0, 5)]


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_sdpa_packed_and_padded(arch):
    fast, ref = tiny_backbone(arch, "dhrd_segments"), tiny_backbone(arch, "sdpa")
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(12), torch.arange(5), torch.arange(3)])[None].expand(2, -1)
    with torch.no_grad():
        got, want = (m(input_ids=ids, position_ids=pos, use_cache=False).logits for m in (fast, ref))
        assert float((got - want).abs().max()) < 1e-5
        for pad in (slice(0, 5), slice(15, 20)):  # left and right padding: sdpa's masked path
            mask = torch.ones(2, 20, dtype=torch.long)
            mask[1, pad] = 0
            got, want = (m(input_ids=ids, attention_mask=mask, use_cache=False).logits for m in (fast, ref))
            assert float((got - want)[mask.bool()].abs().max()) < 1e-5


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gpt2"])  # transformers: no flex for GPT-2
def test_flex_attention_isolates_packed_segments(arch):
    """``--attn_implementation flex_attention``: transformers builds the document mask from
    the packed position ids (on CUDA its block mask skips the blocks between segments);
    each segment's outputs equal the segment run alone."""
    flex, ref = tiny_backbone(arch, "flex_attention"), tiny_backbone(arch, "sdpa")
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(1))
    segs = [(0, 12), (12, 17), (17, 20)]
    pos = torch.cat([torch.arange(e - s) for s, e in segs])[None].expand(2, -1)
    with torch.no_grad():
        packed = flex(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = torch.cat([ref(input_ids=ids[:, s:e], use_cache=False).logits for s, e in segs], dim=1)
    assert float((packed - alone).abs().max()) < 1e-5


def test_packed_rows_take_the_per_segment_path(monkeypatch):
    """Llama: one unmasked causal call per segment and layer, none over the whole row."""
    model = tiny_backbone("llama", "dhrd_segments")
    lengths = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        lengths.append((q.shape[2], kw.get("is_causal"), kw.get("attn_mask")))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(sa.F, "scaled_dot_product_attention", spy)
    pos = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():
        model(input_ids=torch.randint(0, 100, (1, 16)), position_ids=pos, use_cache=False)
    layers = model.config.num_hidden_layers
    assert lengths == [(7, True, None), (9, True, None)] * layers


def test_auto_resolves_by_device():
    cuda = torch.cuda.is_available()
    usable = cuda and sa.varlen_usable(torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    assert sa.resolve("auto") == (sa.NAME if not cuda or usable else "sdpa")
    assert not sa.varlen_usable(torch.device("cpu"), torch.bfloat16)
    assert sa.resolve("eager") == "eager"


def test_segment_plan_is_computed_once_per_batch(monkeypatch):
    """The bounds (a device sync on CUDA) and the mask check run once per forward, not once
    per layer; a new position tensor, or the same one changed in place, is planned again."""
    model = tiny_backbone("llama", "dhrd_segments")
    calls = []
    real = sa.segment_bounds
    monkeypatch.setattr(sa, "segment_bounds", lambda pos: calls.append(1) or real(pos))
    ids = torch.randint(0, 100, (1, 16))
    pos = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():
        first = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert len(calls) == 1 and model.config.num_hidden_layers > 1
        model(input_ids=ids, position_ids=pos.clone(), use_cache=False)
        assert len(calls) == 2
        pos[0, 7:] = torch.arange(7, 16)  # in place: now one segment of 16
        whole = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert len(calls) == 3
        assert float((whole - model(input_ids=ids, use_cache=False).logits).abs().max()) < 1e-5
        assert float((first[:, 7:] - whole[:, 7:]).abs().max()) > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen kernel is CUDA only")
@pytest.mark.parametrize("arch", ARCHS)
def test_varlen_packed_equals_alone_on_cuda(arch):
    """On CUDA in bf16 packed rows take one varlen call: each segment's logits equal the
    segment run alone (bf16 tolerance), the backward runs to finite gradients, and auto
    picks this path."""
    if not sa.varlen_usable(torch.device("cuda"), torch.bfloat16):
        pytest.skip("this torch has no usable varlen kernel")
    assert sa.resolve("auto") == sa.NAME
    model = tiny_backbone(arch, "dhrd_segments").cuda().to(torch.bfloat16)
    ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(2)).cuda()
    segs = [(0, 17), (17, 30), (30, 40)]
    pos = torch.cat([torch.arange(e - s) for s, e in segs])[None].expand(2, -1).cuda()
    packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=ids[:, s:e], use_cache=False).logits.float() for s, e in segs], dim=1)
    assert float((packed.detach() - alone).abs().max()) < 0.05 * float(alone.abs().max())
    packed.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
