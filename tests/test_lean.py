"""The lean classifier export (dhrd.export.lean) from a final/ export written by the training
exporter's own code, on tiny models: predictions equal the dual-head model's, no
LM-head tensor survives, LoRA is merged, dtype/int8 options, and named errors. The
export from a real 2-process ZeRO-3 checkpoint is tests/distributed/test_export_zero3.py."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.lean_helpers import (  # noqa: E402
    MAX_INPUT_LEN,
    TEXTS,
    make_dual_head,
    make_training_output,
    reference_probs,
    tensor_names,
)


@pytest.mark.parametrize("arch,tied,pooling", [("llama", False, "last"), ("llama", True, "mean"),
                                               ("qwen3", False, "last"), ("gemma3_text", True, "last"),
                                               ("gpt2", True, "last")])
def test_lean_predictions_equal_the_dual_head_model(tmp_path, arch, tied, pooling):
    from dhrd.export.lean import export_lean
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig

    model, tok, special = make_dual_head(tied=tied, pooling=pooling, arch=arch)
    out = make_training_output(tmp_path, model, tok, special, eval_metrics={"accuracy": 0.75})
    report = export_lean(out, tmp_path / "lean")
    names = tensor_names(tmp_path / "lean")
    assert not any("lm_head" in n for n in names)
    weights = [f for f in os.listdir(tmp_path / "lean") if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    assert sorted(weights) == ["classifier_head.safetensors", "model.safetensors"]  # safetensors only
    assert "embed_tokens.weight" in names or "wte.weight" in names  # a tied head's only copy
    assert report.lean_bytes < report.dual_head_bytes + 64_000  # + tokenizer and JSON files
    cfg = LeanConfig.load(tmp_path / "lean")
    assert (cfg.task, cfg.labels, cfg.pooling, cfg.max_input_len) == ("rte", ["entailment", "not_entailment"],
                                                                      pooling, MAX_INPUT_LEN)
    assert cfg.tied_embeddings is tied and cfg.special_token_ids == {"reason": special[0], "answer": special[1]}
    assert cfg.training["alpha"] == 0.5 and cfg.training["eval"] == {"step": 7, "metrics": {"accuracy": 0.75}}

    ref = reference_probs(model, tok)
    got = LeanClassifier.load(str(tmp_path / "lean")).predict(TEXTS, batch_size=3)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float((got - ref).abs().max()) < 1e-5


def test_untied_lm_head_is_dropped_and_sizes_shrink(tmp_path):
    from dhrd.export.lean import export_lean

    model, tok, special = make_dual_head(tied=False)
    out = make_training_output(tmp_path, model, tok, special)
    from safetensors.torch import load_file

    final_weights = os.path.join(out, "final", "model.safetensors")
    full = set(load_file(final_weights))
    assert "lm_head.weight" in full  # the training export keeps the reasoning head ...
    export_lean(out, tmp_path / "lean")
    assert tensor_names(tmp_path / "lean") == {n.removeprefix("model.") for n in full - {"lm_head.weight"}}
    lm_bytes = model.lm_weight.numel() * 4
    shrink = os.path.getsize(final_weights) - os.path.getsize(tmp_path / "lean" / "model.safetensors")
    assert lm_bytes <= shrink < lm_bytes + 4096  # ... and the lean one drops only it


# bf16 weights and activations: the probabilities of this tiny model move by at most
# ~1e-2; the argmax is only compared where the fp32 margin exceeds 0.05.
BF16_PROB_TOL, INT8_PROB_TOL, MARGIN = 2e-2, 5e-2, 0.05


def test_bf16_and_int8_exports_within_tolerance(tmp_path):
    from safetensors.torch import load_file, save_file

    from dhrd.export.lean import export_lean
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig

    model, tok, special = make_dual_head(seed=3)
    with torch.no_grad():  # a head with decisive outputs, so the argmax check has teeth
        model.head.out.weight.mul_(40)
    out = make_training_output(tmp_path, model, tok, special)
    ref = reference_probs(model, tok)
    confident = (ref[:, 0] - ref[:, 1]).abs() > MARGIN
    assert confident.any()
    fp32 = export_lean(out, tmp_path / "fp32")
    bf16 = export_lean(out, tmp_path / "bf16", dtype="bfloat16")
    assert LeanConfig.load(tmp_path / "bf16").dtype == "bfloat16"
    assert bf16.lean_bytes < 0.7 * fp32.lean_bytes
    got = LeanClassifier.load(str(tmp_path / "bf16")).predict(TEXTS)
    assert float((got - ref).abs().max()) < BF16_PROB_TOL
    assert torch.equal(got.argmax(-1)[confident], ref.argmax(-1)[confident])

    int8 = export_lean(out, tmp_path / "int8", quantize="int8")
    stored = load_file(tmp_path / "int8" / "model.safetensors")
    q = "layers.0.self_attn.q_proj"
    assert stored[q + ".weight"].dtype == torch.int8 and stored[q + ".weight_scale"].shape == (32,)
    assert stored["embed_tokens.weight"].dtype == torch.float32
    # the Linear layers are ~60% of this tiny decoder's weights and shrink 4x
    assert os.path.getsize(tmp_path / "int8" / "model.safetensors") < \
        0.6 * os.path.getsize(tmp_path / "fp32" / "model.safetensors")
    assert int8.lean_bytes < fp32.lean_bytes
    clf = LeanClassifier.load(str(tmp_path / "int8"))
    assert type(clf.decoder.layers[0].self_attn.q_proj).__module__.startswith("torch.ao.nn.quantized.dynamic")
    got = clf.predict(TEXTS)
    assert float((got - ref).abs().max()) < INT8_PROB_TOL
    assert torch.equal(got.argmax(-1)[confident], ref.argmax(-1)[confident])
    # quantising the float export at load time is the same computation
    assert torch.equal(LeanClassifier.load(str(tmp_path / "fp32"), int8=True).predict(TEXTS), got)
    with pytest.raises(ValueError, match="holds int8 weights: it loads only with int8"):
        LeanClassifier.load(str(tmp_path / "int8"), int8=False)
    with pytest.raises(ValueError, match="int8 dynamic quantisation starts from float32"):
        export_lean(out, tmp_path / "bad", dtype="bfloat16", quantize="int8")
    del stored[q + ".weight_scale"]
    save_file(stored, tmp_path / "int8" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: int8 layer 'layers.0.self_attn.q_proj' lacks "
                                         r"tensor 'layers.0.self_attn.q_proj.weight_scale'"):
        LeanClassifier.load(str(tmp_path / "int8"))


def test_lora_adapters_are_merged(tmp_path):
    """write_lean folds trained LoRA adapters into the decoder weights."""
    from dhrd.config import ModelArgs
    from dhrd.export.lean import write_lean
    from dhrd.model.dual_head import DualHeadModel
    from dhrd.model.lora import apply_lora
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig

    base, tok, special = make_dual_head()
    before = reference_probs(base, tok)
    lora_backbone = apply_lora(base.backbone, ModelArgs(model="x", lora=True, lora_r=4, lora_dropout=0.0))
    model = DualHeadModel(lora_backbone, 2, head="mlp")  # make_dual_head's
    model.head.load_state_dict(base.head.state_dict())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    ref = reference_probs(model, tok)
    cfg = LeanConfig(task="rte", labels=["entailment", "not_entailment"], verbalizers=["yes", "no"],
                     pooling="last", max_input_len=MAX_INPUT_LEN, num_labels=2, head_inner_size=32,
                     special_token_ids={"reason": special[0], "answer": special[1]})
    write_lean(model, tok, cfg, str(tmp_path / "lean"), lora=True)
    assert not any("lora" in n for n in tensor_names(tmp_path / "lean"))
    got = LeanClassifier.load(str(tmp_path / "lean")).predict(TEXTS)
    assert float((got - ref).abs().max()) < 1e-5
    assert float((before - ref).abs().max()) > 1e-3  # the adapters do change the outputs


def test_missing_or_broken_sources_are_named(tmp_path):
    from dhrd.export.lean import CheckpointError, export_lean
    from dhrd.serve.classifier import LeanClassifier

    with pytest.raises(CheckpointError, match="training output not found: .*nowhere"):
        export_lean(str(tmp_path / "nowhere"), tmp_path / "lean")
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"training config \(needed to rebuild the architecture\) "
                                              r"not found: .*run/config.json"):
        export_lean(str(ckpt), tmp_path / "lean")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {}, "data": {}, "loss": {}}))
    with pytest.raises(CheckpointError, match="step_00000004 is incomplete: no dhrd_complete.json"):
        export_lean(str(ckpt), tmp_path / "lean")
    with pytest.raises(CheckpointError, match="neither final/ nor a complete checkpoint"):
        export_lean(str(tmp_path / "run"), tmp_path / "lean")
    with pytest.raises(FileNotFoundError, match="not a lean classifier directory: no lean_config.json"):
        LeanClassifier.load(str(tmp_path / "run"))


def test_export_cli_prints_sizes(tmp_path, capsys):
    """``dhrd export`` in this process (the tools/export_classifier.py alias runs in a child
    in tests/test_hf_export.py): sizes on stdout; a missing output is one line, exit 2."""
    from dhrd.cli import main
    from dhrd.serve.lean_format import LeanConfig

    model, tok, special = make_dual_head()
    out = make_training_output(tmp_path, model, tok, special)
    assert main(["export", out, str(tmp_path / "lean"), "--dtype", "bfloat16"]) == 0
    stdout = capsys.readouterr().out
    assert "dual-head weights" in stdout and "lean classifier" in stdout and "MiB" in stdout
    assert LeanConfig.load(str(tmp_path / "lean")).dtype == "bfloat16"
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dhrd export: error: training output not found") and "\n" not in err
    with pytest.raises(SystemExit):  # argparse: a lean-only option with --format hf
        main(["export", out, str(tmp_path / "hf"), "--format", "hf", "--int8"])
    assert "--int8 is a lean-format option" in capsys.readouterr().err
