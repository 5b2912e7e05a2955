"""DualHeadModel: packed segments equal the same examples run alone, for every
supported architecture and for sdpa and eager attention; special tokens; pooling."""

import pytest
import torch

from dhrd.data.packing import collate_packed
from dhrd.model.dual_head import ANSWER_TOKEN, REASON_TOKEN, DualHeadModel, add_reasoning_tokens, pool_hidden
from tests.helpers import ARCHS, make_tiny_tokenizer, tiny_backbone


def segments(lengths, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(2, vocab, (n,), generator=g).tolist()
        cls_pos = n - 1 - (i % 3)  # the pooled token is not always the last one
        out.append({"input_ids": ids, "lm_mask": [0] + [1] * (n - 1), "cls_pos": cls_pos, "label": i % 2})
    return out


def run_alone(model, seg):
    batch = collate_packed([[seg]], pad_id=0, pad_to_multiple_of=1)
    return model(**vars(batch))


@pytest.mark.parametrize("attn", ["sdpa", "eager", "dhrd_segments"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_segments_equal_alone(arch, attn, pooling):
    model = DualHeadModel(tiny_backbone(arch, attn), num_labels=3, pooling=pooling).eval()
    segs = segments([7, 12, 5, 9, 3])
    rows = [segs[:3], segs[3:]]  # 2 rows, the second padded: padding is a segment too
    batch = collate_packed(rows, pad_id=0)
    with torch.no_grad():
        packed = model(**vars(batch))
        flat = packed.hidden.reshape(-1, packed.hidden.shape[-1])
        for s, seg in enumerate(segs):
            alone = run_alone(model, seg)
            start = int(batch.cls_start[s])
            n = len(seg["input_ids"])
            torch.testing.assert_close(flat[start:start + n], alone.hidden[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(packed.cls_logits[s], alone.cls_logits[0], atol=1e-5, rtol=0)


def test_forward_never_materialises_vocab_logits():
    model = DualHeadModel(tiny_backbone("llama"), num_labels=2)
    batch = collate_packed([segments([6, 4])], pad_id=0)
    out = model(**vars(batch))
    assert out.hidden.shape[-1] == 32 and out.cls_logits.shape == (2, 2)
    assert not hasattr(out, "logits")


def test_mean_pooling_is_mean_of_input_tokens():
    hidden = torch.randn(2, 6, 4)
    cls_start, cls_index = torch.tensor([0, 3, 7]), torch.tensor([2, 5, 9])
    pooled = pool_hidden(hidden, cls_index, cls_start, "mean")
    flat = hidden.reshape(-1, 4)
    expected = torch.stack([flat[0:3].mean(0), flat[3:6].mean(0), flat[7:10].mean(0)])
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(pool_hidden(hidden, cls_index, None, "last"), flat[[2, 5, 9]])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])  # untied and tied heads
def test_reasoning_tokens_added_with_mean_rows(arch):
    tok = make_tiny_tokenizer()
    backbone = tiny_backbone(arch)
    old_in = backbone.get_input_embeddings().weight.detach().clone()
    old_out = backbone.get_output_embeddings().weight.detach().clone()
    reason_id, ans_id = add_reasoning_tokens(tok, backbone)
    assert tok.convert_ids_to_tokens([reason_id, ans_id]) == [REASON_TOKEN, ANSWER_TOKEN]
    # a special token is never split by the tokenizer
    assert tok(f"a {REASON_TOKEN} b", add_special_tokens=False)["input_ids"].count(reason_id) == 1
    emb = backbone.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == old_in.shape[0] + 2
    torch.testing.assert_close(emb[reason_id], old_in.mean(0))
    torch.testing.assert_close(emb[ans_id], old_in.mean(0))
    out = backbone.get_output_embeddings().weight
    torch.testing.assert_close(out[ans_id], old_out.mean(0))
    assert (out is emb) == bool(backbone.config.tie_word_embeddings)
    # idempotent: a saved DHRD tokenizer is not extended again
    assert add_reasoning_tokens(tok, backbone) == (reason_id, ans_id) and emb.shape[0] == len(tok)


def test_padded_vocab_uses_existing_rows():
    """Qwen-style: the embedding has more rows than the tokenizer; no resize needed."""
    tok = make_tiny_tokenizer()
    backbone = tiny_backbone("qwen2", vocab_size=len(tok) + 16)
    reason_id, ans_id = add_reasoning_tokens(tok, backbone)
    emb = backbone.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) + 14
    torch.testing.assert_close(emb[reason_id], emb[: len(tok) - 2].mean(0))


def test_bad_head_arguments():
    with pytest.raises(ValueError, match="pooling"):
        DualHeadModel(tiny_backbone("llama"), 2, pooling="max")
    with pytest.raises(ValueError, match="at least 2 labels"):
        DualHeadModel(tiny_backbone("llama"), 1)
