"""--format hf: the exported classifier is a standard <Arch>ForSequenceClassification.
``pipeline("text-classification")`` in a process that imports nothing from dhrd gives
the labels and probabilities of ``dhrd predict`` on the lean export of the same
training output (batches of mixed lengths), for Llama, Qwen3 and Gemma 3 tiny models
and for the real SmolLM2-135M."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.lean_helpers import make_dual_head, make_training_output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mixed lengths, all within the training max_input_len (40 tiny-tokenizer tokens)
TEXTS = ["Premise: the cat is true\nHypothesis: the cat holds\nAnswer yes or no.",
         "short", "Premise: false false: the river is false\nHypothesis: the river holds",
         "a b c", "true so therefore"]

PIPELINE = r"""
import json, sys
from transformers import pipeline
clf = pipeline("text-classification", model=sys.argv[1], top_k=None, device="cpu")
texts = json.loads(sys.argv[2])
out = clf(texts, batch_size=int(sys.argv[3]))
assert not any(m == "dhrd" or m.startswith("dhrd.") for m in sys.modules), "dhrd was imported"
print(json.dumps([{d["label"]: d["score"] for d in row} for row in out]))
"""


def pipeline_probs(model_dir, texts, batch_size: int = 3) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PIPELINE, str(model_dir), json.dumps(texts), str(batch_size)],
                          capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lean_probs(out, tmp_path, texts) -> tuple[list[str], torch.Tensor]:
    from dhrd.export.lean import export_lean
    from dhrd.serve.classifier import LeanClassifier

    export_lean(out, str(tmp_path / "lean"))
    clf = LeanClassifier.load(str(tmp_path / "lean"))
    return clf.config.labels, clf.predict(texts, batch_size=3)


def check_same(hf: list[dict], labels, probs: torch.Tensor, tol: float = 1e-5) -> None:
    for row, ref in zip(hf, probs.tolist()):
        assert set(row) == set(labels)
        got = [row[lab] for lab in labels]
        assert max(abs(a - b) for a, b in zip(got, ref)) < tol, (got, ref)
        assert max(row, key=row.get) == labels[max(range(len(ref)), key=ref.__getitem__)]


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen3", False), ("gemma3_text", True)])
def test_pipeline_equals_dhrd_predict(tmp_path, arch, tied):
    from dhrd.export.hf import export_hf

    model, tok, special = make_dual_head(arch=arch, tied=tied, head="linear")
    with torch.no_grad():  # a head that separates the classes clearly, so labels are a real check
        model.head.out.weight.normal_(0, 2.0)
    out = make_training_output(tmp_path, model, tok, special, eval_metrics={"accuracy": 0.75})
    labels, ref = lean_probs(out, tmp_path, TEXTS)
    report = export_hf(out, str(tmp_path / "hf"))
    assert report.pad_added  # the tiny tokenizer pads with EOS: a distinct <PAD> is added
    check_same(pipeline_probs(tmp_path / "hf", TEXTS), labels, ref)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification")
    assert cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert cfg["problem_type"] == "single_label_classification"
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.pad_token_id == cfg["pad_token_id"] != hf_tok.eos_token_id
    assert hf_tok.padding_side == "right"
    assert not list(tmp_path.joinpath("hf").glob("*.py"))  # no custom code in the output


def test_template_card_and_single_examples(tmp_path):
    """The stored template renders the training text; the card carries Hub metadata;
    each example alone (no padding at all) agrees with the batched run."""
    from huggingface_hub import ModelCard

    from dhrd.data.tasks import get_task
    from dhrd.data.templates import CONFIG_KEY, render_input
    from dhrd.export.hf import export_hf

    model, tok, special = make_dual_head(head="linear")
    out = make_training_output(tmp_path, model, tok, special, eval_metrics={"accuracy": 0.75})
    export_hf(out, str(tmp_path / "hf"))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    row = {"premise": "the cat is true", "hypothesis": "the cat holds"}
    assert render_input(cfg[CONFIG_KEY], row) == get_task("rte").render(row)
    assert cfg["dhrd"]["task"] == "rte" and cfg["dhrd"]["max_input_len"] == 40
    card = (tmp_path / "hf" / "README.md").read_text()
    meta = ModelCard(card).data.to_dict()  # the metadata as the Hub reads it
    assert card.startswith("---\n") and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["dhrd", "reasoning-distillation", "rte"]
    assert meta["base_model"] == str(tmp_path / "base")  # the training config's backbone
    assert meta["model-index"] == [{"name": "rte-dhrd-classifier", "results": [{
        "task": {"type": "text-classification"}, "dataset": {"name": "rte", "type": "rte"},
        "metrics": [{"type": "accuracy", "value": 0.75}]}]}]
    assert "## Use" in card and "## Training" in card and "## Limitations" in card
    assert get_task("rte").render(
        {"premise": "A man is playing a guitar on stage.", "hypothesis": "A person is making music."}) in card
    alone = [pipeline_probs(tmp_path / "hf", [t], 1)[0] for t in TEXTS[:2]]
    batched = pipeline_probs(tmp_path / "hf", TEXTS[:2], 2)
    for a, b in zip(alone, batched):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def _predict_cli(model_dir, data, out, capsys, *extra) -> tuple[int, list[dict], str]:
    from dhrd.cli import main

    rc = main(["predict", str(model_dir), "--input", str(data), "--output", str(out), "--batch_size", "2", *extra])
    err = capsys.readouterr().err
    return rc, ([json.loads(line) for line in open(out)] if rc == 0 else []), err


def test_dhrd_predict_takes_the_hf_export(tmp_path, capsys):
    """``dhrd export`` both formats of one training output, then ``dhrd predict`` on each
    (the loader ``dhrd serve`` uses): the same labels, probabilities and metrics."""
    from dhrd.cli import main

    model, tok, special = make_dual_head(head="linear")
    with torch.no_grad():  # a head that separates the classes clearly, so labels are a real check
        model.head.out.weight.normal_(0, 2.0)
    out = make_training_output(tmp_path, model, tok, special)
    assert main(["export", out, str(tmp_path / "export"), "--format", "all"]) == 0
    assert "Hugging Face classifier" in capsys.readouterr().out
    # rows of different lengths, each rendered within max_input_len (where the two formats may differ)
    pairs = [("yes", "no"), ("Hi", "no"), ("false so", "yes"), ("the cat", "true"), ("so", "the")]
    rows = [{"idx": i, "premise": p, "hypothesis": h, "label": ["entailment", "not_entailment"][i % 2]}
            for i, (p, h) in enumerate(pairs)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {}
    for fmt in ("lean", "hf"):
        rc, preds, err = _predict_cli(tmp_path / "export" / fmt, tmp_path / "in.jsonl", tmp_path / f"{fmt}.jsonl",
                                      capsys)
        assert rc == 0, err
        got[fmt] = (preds, json.loads(err.strip().splitlines()[-1])["metrics"])
    (lean, lean_metrics), (hf, hf_metrics) = got["lean"], got["hf"]
    assert [p["label"] for p in hf] == [p["label"] for p in lean] and hf_metrics == lean_metrics
    assert len({round(p["probs"]["entailment"], 4) for p in lean}) == len(rows)  # the inputs matter
    for a, b in zip(hf, lean):
        assert a["id"] == b["id"] and max(abs(a["probs"][k] - b["probs"][k]) for k in b["probs"]) < 1e-5
    rc, _, err = _predict_cli(tmp_path / "export" / "hf", tmp_path / "in.jsonl", tmp_path / "x.jsonl", capsys,
                              "--int8", "true")
    assert rc == 2 and "--int8 is a lean-format option" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,pooling,match", [("mlp", "last", "the mlp head"), ("linear", "mean", "pools by 'mean'")])
def test_unexportable_heads_are_refused_by_name(tmp_path, kind, pooling, match):
    model, tok, special = make_dual_head(head=kind, pooling=pooling)
    out = make_training_output(tmp_path, model, tok, special)
    cmd = [sys.executable, os.path.join(REPO, "tools", "export_classifier.py"), out, str(tmp_path / "hf"),
           "--format", "hf"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and match in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "hf").exists()
    # --format all (what a Slurm job's EXPORT=all runs): the lean export, and why there is no HF one
    both = subprocess.run([*cmd[:3], str(tmp_path / "export"), "--format", "all"], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 0, both.stderr[-3000:]
    assert (tmp_path / "export" / "lean" / "lean_config.json").exists() and not (tmp_path / "export" / "hf").exists()
    assert "no HF export: " in both.stdout and match in both.stdout


@pytest.mark.slow
def test_real_smollm2_export(tmp_path):
    """SmolLM2-135M (pad == EOS in its tokenizer? it gets a distinct pad either way)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dhrd.export.hf import export_hf
    from dhrd.model.backbones import NO_REMOTE_CODE, resolve_model_path
    from dhrd.model.dual_head import DualHeadModel, add_reasoning_tokens

    path = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    backbone = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **NO_REMOTE_CODE)
    special = add_reasoning_tokens(tok, backbone)
    torch.manual_seed(0)
    model = DualHeadModel(backbone, 2, head="linear").eval()
    out = make_training_output(tmp_path, model, tok, special)
    texts = [get_text(i) for i in range(4)]
    labels, ref = lean_probs(out, tmp_path, texts)
    export_hf(out, str(tmp_path / "hf"))
    check_same(pipeline_probs(tmp_path / "hf", texts, 4), labels, ref)


def get_text(i: int) -> str:
    from dhrd.data.tasks import get_task

    words = ["A dog runs in the park.", "Two people sit", "The weather is cold and the sky is grey today.", "Hi"]
    return get_task("rte").render({"premise": words[i], "hypothesis": words[(i + 1) % 4]})


@pytest.mark.parametrize("stage", ["auto", "zero2"])
def test_trained_with_head_linear_exports_from_final_and_checkpoint(tmp_path, stage):
    """The real path: ``dhrd/train.py --head linear``, then both exports of final/ and of
    an earlier step's checkpoint agree with dhrd predict; the checkpoint of the default
    config (one process: stage 0, model and optimizer in one file) and of ZeRO-2 (model
    states plus an optimizer shard)."""
    from dhrd.export.hf import export_hf
    from dhrd.export.lean import export_lean
    from dhrd.serve.classifier import LeanClassifier
    from tests.distributed.train_helpers import run_train, write_model, write_task

    paths = write_task(tmp_path / "data", n_train=16, n_eval=8)
    model_dir = write_model(tmp_path / "base")
    out = tmp_path / "run"
    extra = ["--ds_config", os.path.join(REPO, "ds_configs", "zero2.json")] if stage == "zero2" else []
    proc = run_train(model_dir, paths, out, "--head", "linear", "--max_steps", "3", "--save_every", "2",
                     "--global_batch_size", "8", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["head"] == "linear"
    assert config["deepspeed"]["zero_optimization"]["stage"] == (0 if stage == "auto" else 2)
    for tag in ("final", "latest"):
        export_lean(str(out), str(tmp_path / tag / "lean"), tag=tag)
        clf = LeanClassifier.load(str(tmp_path / tag / "lean"))
        export_hf(str(out), str(tmp_path / tag / "hf"), tag=tag)
        check_same(pipeline_probs(tmp_path / tag / "hf", TEXTS), clf.config.labels, clf.predict(TEXTS, batch_size=3))
    # stage 0 and ZeRO-2 write one model-state file, whose loss is named (it was once asked
    # for under ZeRO-3's per-rank name and no ZeRO-2 checkpoint exported at all)
    from dhrd.export.lean import CheckpointError

    os.remove(out / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="missing mp_rank_00_model_states.pt"):
        export_hf(str(out), str(tmp_path / "bad"), tag="latest")
