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
    assert sa.resolve("auto") == ("sdpa" if torch.cuda.is_available() else sa.NAME)
    assert sa.resolve("eager") == "eager"
