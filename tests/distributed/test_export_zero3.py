"""Lean export from a real 2-process ZeRO-3 checkpoint (``deepspeed --num_gpus 2`` on
CPU, a mid-training ``--save_every`` step): the lean classifier predicts what the
in-training classifier predicts, holds no LM-head tensor, and damaged checkpoints are
refused with the damage named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.distributed.train_helpers import REPO, child_env, run_train, write_model, write_task  # noqa: E402

pytestmark = pytest.mark.distributed

TAG = "step_00000003"
RUN = ["--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"), "--max_steps", 5, "--save_every", 3,
       "--eval_every", 3, "--micro_batches_per_step", 4, "--lr", 3e-3, "--seed", 3]
# bf16 weights and activations vs the fp32 in-training classifier: probabilities within
# 2e-2; the argmax is compared where the fp32 margin exceeds 0.05
BF16_PROB_TOL, MARGIN = 2e-2, 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_zero3")
    paths, model = write_task(root / "data"), write_model(root / "model")
    out = root / "out"
    proc = run_train(model, paths, out, *RUN, nprocs=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "checkpoints" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    return root, paths, model, out


def export(source, dest, *extra):
    cmd = [sys.executable, os.path.join(REPO, "tools", "export_classifier.py"), str(source), str(dest), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())


def in_training_probs(model_dir, out, texts) -> torch.Tensor:
    """The classifier as training ran it: a DualHeadModel built from the base model the
    training config names, the checkpoint's fp32 master weights loaded strictly, each x
    tokenised by the training sequence builder and run alone."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dhrd.model.dual_head import DualHeadModel, add_reasoning_tokens

    cfg = json.load(open(out / "config.json"))
    assert cfg["model"]["model"] == str(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    backbone = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert list(add_reasoning_tokens(tok, backbone)) == cfg["derived"]["special_token_ids"]
    model = DualHeadModel(backbone, 2, pooling=cfg["model"]["pooling"], head=cfg["model"]["head"]).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), TAG)
    model.load_state_dict({k[len("model."):]: v for k, v in state.items()}, strict=True)
    return dual_head_probs(model, tok, cfg, texts), state


def dual_head_probs(model, tok, cfg, texts) -> torch.Tensor:
    """DualHeadModel.forward on each x alone, tokenised by the training sequence builder."""
    from dhrd.data.sequences import SequenceBuilder, SequenceSpec

    reason, ans = cfg["derived"]["special_token_ids"]
    builder = SequenceBuilder(tok, reason, ans, ("yes", "no"),
                              SequenceSpec(max_seq_len=cfg["data"]["max_seq_len"],
                                           max_input_len=cfg["data"]["max_input_len"], with_reasoning=False))
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([builder.input_ids(t)[0]])
            n = ids.shape[1]
            rows.append(model(ids, torch.arange(n)[None], torch.tensor([n - 1])).cls_logits.softmax(-1)[0])
    return torch.stack(rows)


def test_lean_export_matches_in_training_classifier(trained, tmp_path):
    from safetensors import safe_open

    from dhrd.data.tasks import get_task
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig

    root, paths, model_dir, out = trained
    texts = [e.text for e in get_task("rte").read(paths["eval"])]  # long ones get left-truncated
    ref, state = in_training_probs(model_dir, out, texts)
    assert "model.backbone.lm_head.weight" in state  # the checkpoint holds the untied reasoning head

    proc = export(out, tmp_path / "fp32", "--tag", TAG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dual-head weights" in proc.stdout and "lean classifier" in proc.stdout
    with safe_open(str(tmp_path / "fp32" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert not any("lm_head" in n for n in names) and "embed_tokens.weight" in names
    cfg = LeanConfig.load(tmp_path / "fp32")
    ev = json.load(open(out / "eval_results.json"))
    at3 = [h for h in ev["history"] if h["step"] == 3][0]
    assert cfg.training["step"] == 3 and cfg.training["eval"]["metrics"]["accuracy"] == at3["accuracy"]
    trained = json.load(open(out / "config.json"))
    assert cfg.training["alpha"] == 1.0 and cfg.max_input_len == trained["data"]["max_input_len"]

    got = LeanClassifier.load(str(tmp_path / "fp32")).predict(texts, batch_size=5)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float((got - ref).abs().max()) < 1e-5

    proc = export(out / "checkpoints" / TAG, tmp_path / "bf16", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = LeanClassifier.load(str(tmp_path / "bf16")).predict(texts, batch_size=5)
    confident = (ref[:, 0] - ref[:, 1]).abs() > MARGIN
    assert float((got - ref).abs().max()) < BF16_PROB_TOL
    assert torch.equal(got.argmax(-1)[confident], ref.argmax(-1)[confident])


def _copy(out, dest):
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns("cache", "tensorboard", "final"))
    return dest / "checkpoints" / TAG


def test_damaged_checkpoints_are_named(trained, tmp_path):
    from dhrd.export.lean import CheckpointError, export_lean

    out = trained[3]
    ckpt = _copy(out, tmp_path / "missing_shard")
    os.remove(ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    proc = export(ckpt, tmp_path / "lean")
    assert proc.returncode == 2
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt (rank 1 of 2)" in proc.stderr and TAG in proc.stderr
    assert not (tmp_path / "lean").exists()

    ckpt = _copy(out, tmp_path / "truncated")
    shard = ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(CheckpointError, match="zero_pp_rank_0_mp_rank_00_model_states.pt: truncated"):
        export_lean(str(ckpt), tmp_path / "lean")

    ckpt = _copy(out, tmp_path / "no_config")
    os.remove(ckpt.parent.parent / "config.json")
    with pytest.raises(CheckpointError, match=r"training config .* not found: .*no_config/config.json"):
        export_lean(str(ckpt), tmp_path / "lean")

    ckpt = _copy(out, tmp_path / "no_marker")
    os.remove(ckpt / "dhrd_complete.json")
    with pytest.raises(CheckpointError, match="incomplete: no dhrd_complete.json"):
        export_lean(str(ckpt.parent.parent), tmp_path / "lean", tag=TAG)


def test_lora_checkpoint_exports_merged(trained, tmp_path):
    """LoRA under ZeRO-3 (the frozen base partitioned too): the lean export folds the
    trained adapters in and predicts what the unmerged in-training model predicts."""
    from safetensors.torch import load_file

    from dhrd.data.tasks import get_task
    from dhrd.export.lean import dual_head_from_checkpoint, resolve_source
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig

    root, paths, model_dir, _ = trained
    out = root / "lora"
    proc = run_train(model_dir, paths, out, "--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"),
                     "--max_steps", 5, "--save_every", 4, "--micro_batches_per_step", 4, "--lr", 1e-2,
                     "--lora", "true", "--export_final", "false", nprocs=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tag = "step_00000004"
    unmerged, tok = dual_head_from_checkpoint(resolve_source(str(out), tag))
    # the first two steps run at warm-up lr 0; steps 3-4 moved the adapters (lora_B starts at zero)
    assert any("lora_B" in n and float(p.detach().abs().max()) > 0 for n, p in unmerged.named_parameters())
    texts = [e.text for e in get_task("rte").read(paths["eval"])][:8]
    ref = dual_head_probs(unmerged, tok, json.load(open(out / "config.json")), texts)

    proc = export(out, tmp_path / "lean", "--tag", tag)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert LeanConfig.load(tmp_path / "lean").training["lora_merged"] is True
    weights = load_file(tmp_path / "lean" / "model.safetensors")
    assert not any("lora" in k for k in weights)
    base = load_file(os.path.join(model_dir, "model.safetensors"))
    q = "layers.0.self_attn.q_proj.weight"
    assert float((weights[q] - base["model." + q]).abs().max()) > 0  # the adapters are in the weights
    got = LeanClassifier.load(str(tmp_path / "lean")).predict(texts, batch_size=4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float((got - ref).abs().max()) < 1e-5
