"""--formulation choice end to end on a tiny COPA-format task: one real ``train.py`` run
(--method dhrd: option segments and LM sequences in the same packs) with dev accuracy
during and after training; resuming its step-6 checkpoint replays steps 7-12 exactly;
the lean export, ``dhrd predict`` and ``dhrd serve`` give the trained model's option
probabilities; ``--format hf`` and tasks without options are refused with a reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.choice_helpers import write_choice_task
from tests.distributed.train_helpers import REPO, child_env, losses, write_model

ARGS = ["--task", "copa", "--formulation", "choice", "--pack_tokens", "512", "--max_seq_len", "128",
        "--progress", "false", "--warmup_steps", "2", "--max_steps", "12", "--global_batch_size", "8",
        "--lr", "1e-2", "--eval_every", "6", "--save_every", "6", "--head", "linear"]


def train(model, paths, out, *extra):
    cmd = [sys.executable, f"{REPO}/dhrd/train.py", "--model", model, "--train_file", paths["train"],
           "--eval_file", paths["eval"], "--rationale_file", paths["rationales"], "--output_dir", str(out),
           *ARGS, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=child_env())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    paths, model = write_choice_task(root / "data"), write_model(root / "model")
    proc = train(model, paths, root / "run", "--method", "dhrd")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, paths, model


def test_dhrd_choice_run_trains_evaluates_and_exports(run):
    root, _, _ = run
    out = root / "run"
    cls, lm = losses(out, "train/loss_cls"), losses(out, "train/loss_lm")
    assert sorted(cls) == list(range(1, 13)) and all(v > 0 for v in lm.values())  # the LM term ran
    assert sum(cls[s] for s in (10, 11, 12)) / 3 < sum(cls[s] for s in (1, 2, 3)) / 3
    ev = json.loads((out / "eval_results.json").read_text())
    assert [h["step"] for h in ev["history"]] == [6, 12] and ev["metrics"]["accuracy"] >= 0.75
    preds = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 32 and {p["pred"] for p in preds} <= {0, 1}
    report = json.loads((out / "data_report.json").read_text())["counts"]
    assert report["choice_questions"] == 48 and report["choice_option_sequences"] == 96
    assert report["examples_with_rationale"] == 48
    meta = json.loads((out / "final" / "dhrd_config.json").read_text())
    assert meta["formulation"] == "choice" and meta["num_labels"] == 2 and meta["labels"] == ["choice1", "choice2"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["formulation"] == "choice" and cfg["derived"]["train_examples"] == 48


def test_resuming_replays_the_same_questions(run):
    """A step's examples are whole questions and the data order depends only on the seed:
    resumed from step_6 (in another output dir), steps 7-12 repeat the losses exactly."""
    root, paths, model = run
    first = root / "run"
    step_6 = first / "checkpoints" / "step_00000006"
    proc = train(model, paths, root / "resumed", "--method", "dhrd", "--resume", str(step_6), "--export_final", "false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "at step 6" in proc.stdout + proc.stderr
    for key in ("train/loss_cls", "train/loss_lm"):
        a, b = losses(first, key), losses(root / "resumed", key)
        assert sorted(b) == list(range(7, 13))
        assert [b[s] for s in range(7, 13)] == pytest.approx([a[s] for s in range(7, 13)], rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def lean(run):
    from dhrd.export.lean import export_lean

    root, _, _ = run
    export_lean(str(root / "run"), str(root / "lean"))
    return root / "lean"


def reference_probs(final_dir, rows) -> torch.Tensor:
    """The trained DualHeadModel from final/, each option [question, option] alone."""
    from dhrd.data.sequences import SequenceBuilder, SequenceSpec
    from dhrd.data.tasks import get_task
    from dhrd.export.lean import Source, dual_head_from_final

    model, tok = dual_head_from_final(Source("final", str(final_dir.parent), "final", str(final_dir), None))
    seq = SequenceBuilder(tok, 0, 0, ("1", "2"), SequenceSpec(max_seq_len=128, max_input_len=96))
    out = []
    with torch.no_grad():
        for row in rows:
            scores = []
            for text in get_task("copa").render_options(row):
                ids = torch.tensor([seq.input_ids(text)[0]])
                n = ids.shape[1]
                out_ = model(ids, torch.arange(n)[None], torch.tensor([n - 1]), torch.tensor([0]))
                scores.append(out_.cls_logits[0, 0])
            out.append(torch.stack(scores).softmax(-1))
    return torch.stack(out)


def test_lean_predict_and_serve_give_the_trained_models_choices(run, lean, tmp_path):
    from dhrd.data.tasks import get_task
    from dhrd.serve.classifier import LeanClassifier
    from dhrd.serve.lean_format import LeanConfig
    from tests.serve_helpers import Server, call

    root, paths, _ = run
    cfg = LeanConfig.load(str(lean))
    assert (cfg.formulation, cfg.version, cfg.head_outputs, cfg.num_labels) == ("choice", 2, 1, 2)
    rows = [json.loads(line) for line in open(paths["eval"])]
    want = reference_probs(root / "run" / "final", rows)
    clf = LeanClassifier.load(str(lean))
    got = torch.stack(clf.predict_choices([get_task("copa").render_options(r) for r in rows], batch_size=5))
    assert float((got - want).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="this is a choice model .*use predict_choices"):
        clf.predict(["a text"])

    out = tmp_path / "pred.jsonl"
    proc = subprocess.run([sys.executable, "-m", "dhrd.cli", "predict", str(lean), "--input", paths["eval"],
                           "--output", str(out), "--batch_size", "4"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    got = torch.tensor([[line["probs"]["choice1"], line["probs"]["choice2"]] for line in lines])
    assert float((got - want).abs().max()) < 1e-5
    picks = want.argmax(-1).tolist()
    assert [line["option"] for line in lines] == [r[f"choice{k + 1}"] for r, k in zip(rows, picks)]
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    ev = json.loads((root / "run" / "eval_results.json").read_text())
    assert summary["metrics"]["accuracy"] == pytest.approx(ev["metrics"]["accuracy"])  # the engine's own dev score

    server = Server(lean, tmp_path / "serve.log", "--max_batch_size", "3").wait_ready()
    try:
        status, info = call(server.port, "GET", "/v1/model")
        assert status == 200 and info["accepts"] == ["rows"] and info["formulation"] == "choice"
        status, reply = call(server.port, "POST", "/v1/classify", {"rows": rows[:7]})
        assert status == 200
        got = torch.tensor([[p["probs"]["choice1"], p["probs"]["choice2"]] for p in reply["predictions"]])
        assert float((got - want[:7]).abs().max()) < 1e-5
        assert [p["option"] for p in reply["predictions"]] == [line["option"] for line in lines[:7]]
        status, reply = call(server.port, "POST", "/v1/classify", {"texts": ["Premise: x"]})
        assert status == 400 and 'multiple-choice model' in reply["error"] and '"rows"' in reply["error"]
        status, reply = call(server.port, "POST", "/v1/classify", {"rows": [{"premise": "p", "choice1": "a"}]})
        assert status == 422 and "rows[0]" in reply["error"]
    finally:
        server.stop()


def test_hf_export_of_a_choice_model_is_refused(run, tmp_path):
    from dhrd.export.hf import export_hf

    root, _, _ = run
    for tag in ("final", "step_00000006"):
        with pytest.raises(ValueError, match="transformers has no standard class for a decoder multiple-choice model "
                                             r".*export --format lean"):
            export_hf(str(root / "run"), str(tmp_path / "hf"), tag=tag)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("task,extra,message", [
    ("rte", [], "task 'rte' has no answer options: --formulation choice scores each option"),
    ("copa", ["--method", "rationale_only"], "--formulation choice evaluates its choice head only"),
])
def test_train_refuses_what_choice_cannot_do(tmp_path, capsys, task, extra, message):
    from dhrd.train import main

    paths = write_choice_task(tmp_path, n_train=4, n_eval=2)
    code = main(["--model", str(tmp_path), "--task", task, "--formulation", "choice", "--train_file", paths["train"],
                 "--output_dir", str(tmp_path / "out"), *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_data_report_of_the_choice_formulation(tmp_path, tiny_model_dir, capsys):
    from dhrd.cli_data import main

    paths = write_choice_task(tmp_path, n_train=10, n_eval=2)
    assert main(["--model", str(tiny_model_dir), "--task", "copa", "--formulation", "choice", "--train_file",
                 paths["train"], "--rationale_file", paths["rationales"], "--max_seq_len", "128",
                 "--pack_tokens", "512"]) == 0
    counts = dict(line.split() for line in capsys.readouterr().out.splitlines()
                  if line.startswith("  ") and len(line.split()) == 2)
    assert counts["choice_questions"] == "10" and counts["choice_option_sequences"] == "20"
    assert counts["examples_with_rationale"] == "10"
    assert main(["--model", str(tiny_model_dir), "--task", "rte", "--formulation", "choice",
                 "--train_file", paths["train"]]) == 2
    assert "task 'rte' has no answer options" in capsys.readouterr().err
