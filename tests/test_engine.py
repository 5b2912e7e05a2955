"""The training engine through real ``python dhrd/train.py`` processes (world size 1,
still through deepspeed.initialize) on a tiny learnable task, plus its pure parts."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest

from dhrd.config import METHODS
from tests.distributed.train_helpers import (  # noqa: E402
    REPO,
    _free_port,
    child_env,
    losses,
    run_train,
    train_argv,
    write_model,
    write_task,
)

# lr 1e-2: the tiny pooled classifier's loss falls clearly (3e-3 left it within noise
# once warm-up no longer spends two updates at lr 0)
LEARN = ["--max_steps", 30, "--micro_batches_per_step", 4, "--lr", 1e-2, "--eval_every", 15]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return root, write_task(root / "data"), write_model(root / "model")


@pytest.fixture(scope="module")
def dhrd_run(setup):
    root, paths, model = setup
    out = root / "dhrd"
    proc = run_train(model, paths, out, *LEARN, "--method", "dhrd")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _mean(d, steps):
    return sum(d[s] for s in steps) / len(steps)


@pytest.mark.parametrize("method", ["dhrd", "pooled"])
def test_loss_decreases_through_the_same_engine(setup, dhrd_run, method):
    root, paths, model = setup
    out = dhrd_run
    if method != "dhrd":
        out = root / method
        proc = run_train(model, paths, out, *LEARN, "--method", method)
        assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = json.load(open(out / "config.json"))
    assert cfg["loss"]["alpha"] == METHODS[method]["alpha"]  # the preset, as resolved
    _check_provenance(cfg["environment"])
    total, lm = losses(out), losses(out, "train/loss_lm")
    assert _mean(total, range(26, 31)) < _mean(total, range(1, 6)) - 0.15
    if method == "pooled":
        assert all(v == 0.0 for v in lm.values())  # x-only sequences, no LM term
    else:
        assert _mean(lm, range(26, 31)) < _mean(lm, range(1, 6)) - 0.5
    ev = json.load(open(out / "eval_results.json"))
    assert [h["step"] for h in ev["history"]] == [15, 30] and 0.0 <= ev["metrics"]["accuracy"] <= 1.0
    meta = json.load(open(out / "final" / "dhrd_config.json"))
    assert meta["labels"] == ["entailment", "not_entailment"] and meta["alpha"] == cfg["loss"]["alpha"]


def _check_provenance(env: dict) -> None:
    """The code (git commit of this checkout, dirty or not) and library versions that
    trained a run, as the test process sees them."""
    import importlib.metadata
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)
    else:
        assert env["git"] is None
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["packages"]["deepspeed"] == importlib.metadata.version("deepspeed")
    assert env["argv"][0].endswith("train.py") and env["host"] and env["started"]


def test_bf16_autocast_tracks_the_fp32_run(setup, dhrd_run):
    """--autocast bf16 (DeepSpeed's torch_autocast: fp32 weights and AdamW, bf16 matmuls,
    the fused LM-head loss included) trains the same run as fp32 to bf16 rounding: same
    first-step losses within 3%, the same learning, fp32 weights in final/."""
    from safetensors.torch import load_file

    root, paths, model = setup
    out = root / "dhrd-autocast"
    proc = run_train(model, paths, out, *LEARN, "--method", "dhrd", "--autocast", "bf16")
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = json.load(open(out / "config.json"))
    assert cfg["deepspeed"]["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert cfg["deepspeed"]["bf16"]["enabled"] is False and cfg["deepspeed"]["zero_optimization"]["stage"] == 0
    assert "[rank0] bf16 autocast (fp32 weights and optimizer)" in proc.stderr  # dhrd.logs' handler
    for key in ("train/loss_total", "train/loss_cls", "train/loss_lm"):
        ref, amp = losses(dhrd_run, key), losses(out, key)
        assert amp[1] == pytest.approx(ref[1], rel=3e-2), key
    total, lm = losses(out), losses(out, "train/loss_lm")
    assert _mean(total, range(26, 31)) < _mean(total, range(1, 6)) - 0.15
    assert _mean(lm, range(26, 31)) < _mean(lm, range(1, 6)) - 0.5
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}


def test_tensorboard_events_hold_the_scalars(dhrd_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(dhrd_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("train/loss_total", "train/loss_cls", "train/loss_lm", "train/lr", "train/grad_norm",
              "perf/real_tokens_per_s", "perf/packing_efficiency", "perf/samples_per_s",
              "perf/model_tflops_per_device", "eval/accuracy"):
        assert t in tags, t
    assert len(acc.Scalars("train/loss_total")) == 30
    assert "perf/mfu" not in tags  # no peak FLOP/s figure for a CPU
    assert any("sequences" in t for t in acc.Tags()["tensors"])  # rendered training text
    runs = os.listdir(dhrd_run / "tensorboard")
    assert "hparams" in runs


def test_final_export_loads_without_deepspeed(dhrd_run):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dhrd.model.dual_head import DualHeadModel

    final = dhrd_run / "final"
    meta = json.load(open(final / "dhrd_config.json"))
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.convert_tokens_to_ids("<REASON>") == meta["special_token_ids"]["reason"]
    model = DualHeadModel(AutoModelForCausalLM.from_pretrained(final), meta["num_labels"], pooling=meta["pooling"],
                         head=meta.get("head", "mlp"))
    model.head.load_state_dict(load_file(final / meta["head_file"]))
    ids = torch.tensor([tok("Premise: x")["input_ids"]])
    out = model(ids, torch.arange(ids.shape[1])[None], torch.tensor([ids.shape[1] - 1]))
    assert out.cls_logits.shape == (1, 2)


def test_lora_single_process(setup):
    root, paths, model = setup
    out = root / "lora"
    proc = run_train(model, paths, out, "--max_steps", 4, "--micro_batches_per_step", 2, "--lora", "true",
                     "--lr", 1e-2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.load(open(out / "final" / "dhrd_config.json"))
    assert meta["lora_merged"] is True
    from safetensors.torch import load_file

    base, tuned = load_file(os.path.join(model, "model.safetensors")), load_file(out / "final" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not any("lora" in k for k in tuned) and float((base[q] - tuned[q]).abs().max()) > 0  # merged
    emb = "model.embed_tokens.weight"
    assert float((base[emb] - tuned[emb][: base[emb].shape[0]]).abs().max()) == 0  # base frozen


def test_k_rationales_an_example_train_at_the_steps_of_one(setup):
    """Three rationales an example: one row each, a different one each epoch; the run has
    the steps of one rationale an example, and the data report counts them all."""
    root, paths, model = setup
    k_file = root / "rationales_k3.jsonl"
    with open(paths["rationales"]) as f, open(k_file, "w") as out:
        for line in f:
            row = json.loads(line)
            out.write(json.dumps({"id": row["id"], "rationales": [row["rationale"], "in other words: "
                                  + row["rationale"], "so: " + row["rationale"]]}) + "\n")
    run = root / "k3"
    proc = run_train(model, {**paths, "rationales": str(k_file)}, run, "--epochs", 2, "--global_batch_size", 8,
                     "--method", "dhrd", "--export_final", "false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = json.load(open(run / "config.json"))
    assert cfg["derived"]["train_examples"] == 48 and cfg["derived"]["total_steps"] == 12  # 48 x 2 / 8
    report = json.load(open(run / "data_report.json"))
    counts = report.get("counts", report)
    assert counts["examples_with_several_rationales"] == 48 and counts["rationales_used"] == 144


def test_nonfinite_losses_stop_training_with_a_message(setup):
    root, paths, model = setup
    proc = run_train(model, paths, root / "nan", "--max_steps", 20, "--micro_batches_per_step", 2,
                     "--lr", 1e30, "--warmup_steps", 1, "--max_grad_norm", 0, "--nan_patience", 2,
                     "--head", "mlp",  # lr 1e30 overflows the MLP head within steps
                     "--export_final", "false")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "NaN/inf in 2 consecutive steps" in proc.stderr


@pytest.mark.distributed
def test_nonfinite_step_is_skipped_on_every_rank(tmp_path):
    """2 ranks, 2 micro-batches each, a NaN loss injected on ONE rank (first micro-batch,
    then the last): DeepSpeed applies no update on any rank: weights, master weights and
    AdamW state (moments, step count) bit-identical, lr not advanced, counted as skipped;
    clean steps around them do update; 2 in a row stop with the message. ZeRO 0, 2 and 3
    in turn, in one launch."""
    import subprocess

    worker = os.path.join(REPO, "tests", "distributed", "_nonfinite_worker.py")
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), worker, "0,2,3",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage, rank in itertools.product((0, 2, 3), (0, 1)):
        r = json.load(open(tmp_path / f"stage{stage}-rank{rank}.json"))
        skipped = [s["step"] for s in r["steps"] if s["losses"] is None]
        assert skipped == [1, 3, 4], (stage, r["steps"])
        for s in r["steps"]:
            bad = s["step"] in skipped
            assert s["unchanged"] is bad and s["applied"] is not bad and s["skipped"] == int(bad), (stage, s)
            assert (s["lr_after"] == s["lr_before"]) is bad, (stage, s)
        assert r["guard_total"] == 3 and "NaN/inf in 2 consecutive steps (last: step 5; 3 in all)" in r["stopped"]


def test_lr_warmup_starts_above_zero(dhrd_run):
    """DeepSpeed's WarmupCosineLR gives lr 0 to a fresh run's first two updates; the engine
    starts it so update k uses k / warmup (here warmup 2, lr 1e-2, 30 steps), and the last
    update stays above the cosine floor."""
    lr = losses(dhrd_run, "train/lr")
    assert sorted(lr) == list(range(1, 31))
    assert lr[1] == pytest.approx(5e-3) and all(v > 0 for v in lr.values())
    assert lr[2] == pytest.approx(1e-2 * (1 + math.cos(math.pi / 30)) / 2)  # cosine over 32 - 2 iterations
    assert all(lr[k + 1] < lr[k] for k in range(2, 30))


def test_ds_config_rejects_setups_that_cannot_skip_nonfinite_steps():
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    def fill(**changes):
        cfg = load_ds_config(None)
        for k, v in changes.items():
            cfg[k] = v
        return fill_ds_config(cfg, micro_rows=1, gas=1, world=1, lr=1e-3, weight_decay=0.0, warmup_steps=1,
                              total_steps=4, max_grad_norm=1.0, device=torch.device("cpu"))

    assert fill()["scheduler"]["params"]["total_num_steps"] == 6
    assert fill(zero_optimization={"stage": 0})["zero_optimization"]["stage"] == 0  # step.StepSkipper checks
    with pytest.raises(ValueError, match="compute_grad_norm is false"):
        fill(zero_optimization={"stage": 2, "compute_grad_norm": False}, gradient_clipping=0.0)
    assert fill(zero_optimization={"stage": 3})["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("extra,message", [
    (["--train_file", "{tmp}/nope.jsonl"], "--train_file {tmp}/nope.jsonl: no such file"),
    (["--eval_file", "{tmp}/nope.jsonl"], "--eval_file {tmp}/nope.jsonl: no such file"),
    (["--method", "bogus"], "argument --method: invalid choice: 'bogus' (choose from 'dhrd', 'dhrd_paper',"),
    (["--task", "bogus"], "unknown task 'bogus'"),
    (["--lr", "-0.1"], "lr=-0.1 must be >= 0"),
    (["--ds_config", "{tmp}/none.json"], "DeepSpeed config not found: {tmp}/none.json"),
    (["--ds_config", "ds_configs/zero2.json", "--lr_schedule", "linear"],
     "--lr_schedule linear (WarmupDecayLR), but the DeepSpeed config names scheduler WarmupCosineLR"),
    (["--lr_schedule", "step"], "argument --lr_schedule/--lr-schedule: invalid choice: 'step'"),
    (["--config", "{tmp}/choice.yaml"], "head='wide' is not one of linear, mlp"),
    (["--autocast", "bf16", "--dtype", "bfloat16"], "--autocast bf16 trains fp32 weights; --dtype bfloat16"),
    (["--autocast", "bf16", "--ds_config", "{tmp}/bf16.json"],
     "--autocast bf16 keeps fp32 weights, but the DeepSpeed config enables bf16"),
    (["--config", "{tmp}/bad.yaml"], "{tmp}/bad.yaml:2: not valid YAML"),
    (["--config", "{tmp}/unknown.yaml"], "{tmp}/unknown.yaml: unknown field(s) lrr"),
    (["--model", "{tmp}/no/model"], "--model {tmp}/no/model: no such directory"),
    (["--model", "{tmp}/no/model.gguf"], "--model {tmp}/no/model.gguf: no such GGUF file (--model takes"),
    (["--model", "{tmp}/m.gguf", "--gguf_file", "other.gguf"],
     "--model {tmp}/m.gguf is a GGUF file and --gguf_file other.gguf names another"),
    (["--bogus_flag", "1"], "unknown arguments: --bogus_flag"),
])
def test_bad_arguments_fail_fast_with_one_named_line(setup, tmp_path, capsys, extra, message):
    """Refused before distributed init and the model load: exit code 2, one line on
    stderr naming the file or argument, no traceback. ``main(argv)`` in this process (the
    real process's exit is checked once below)."""
    from dhrd.train import main

    root, paths, model = setup
    (tmp_path / "bad.yaml").write_text("lr: 1\nwarmup_steps: a: b\n")
    (tmp_path / "unknown.yaml").write_text("lrr: 1\n")
    (tmp_path / "choice.yaml").write_text("model: {head: wide}\n")  # a file's values: not argparse's
    (tmp_path / "bf16.json").write_text('{"bf16": {"enabled": true}}')
    (tmp_path / "m.gguf").write_bytes(b"")
    extra = [a.format(tmp=tmp_path) for a in extra]
    assert main(train_argv(model, paths, tmp_path / "out", "--max_steps", 1, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: " + message.format(tmp=tmp_path)), err
    assert not os.path.exists(tmp_path / "out")  # nothing written: refused before any work


def test_a_refused_run_exits_2_in_seconds_without_a_traceback(setup, tmp_path):
    """The same refusal from a real process, as a launcher sees it."""
    root, paths, model = setup
    proc = run_train(model, paths, tmp_path / "out", "--lr", "-0.1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.py: error: lr=-0.1 must be >= 0" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "deepspeed.init_distributed" not in proc.stderr


# ---- pure parts ------------------------------------------------------------------------

def test_method_presets_and_explicit_override():
    from dhrd.config import apply_method, explicit_fields, parse_args

    argv = ["--method", "rationale_only", "--alpha", "0.5"]
    m, d, loss, t, _ = parse_args(argv)
    apply_method(loss, d, explicit_fields(argv))
    assert (loss.alpha, loss.beta, d.rationale_mode) == (0.5, 0.0, "teacher")
    argv = ["--method", "label_only"]
    m, d, loss, t, _ = parse_args(argv)
    apply_method(loss, d, explicit_fields(argv))
    assert d.rationale_mode == "none"


@pytest.mark.parametrize("argv,head,alpha,schedule", [
    ([], "linear", 1.0, "constant"),                                    # no preset: the flags' defaults
    (["--method", "dhrd"], "linear", 0.3, "constant"),                  # the recipe measured best here
    (["--method", "dhrd_paper"], "mlp", 1.0, "constant"),               # the paper's as published
    (["--method", "dhrd_paper", "--head", "linear"], "linear", 1.0, "constant"),  # explicit wins
    (["--method", "dhrd", "--alpha", "1", "--alpha_schedule", "ramp"], "linear", 1.0, "ramp"),
    (["--method", "pooled"], "linear", 0.0, "constant"),
])
def test_dhrd_default_and_the_paper_preset_resolve_to_what_they_say(argv, head, alpha, schedule):
    from dhrd.config import apply_method, explicit_fields, parse_args

    m, d, loss, t, _ = parse_args(argv)
    apply_method(loss, d, explicit_fields(argv), m)
    assert (m.head, loss.alpha, loss.beta, loss.alpha_schedule, d.rationale_mode, d.label_consistency) == (
        head, alpha, 1.0, schedule, "teacher", "keep")


def test_stream_positions_do_not_depend_on_world_size():
    from dhrd.config import TrainArgs
    from dhrd.data.order import MicroBatchStream, micro_batches_per_step

    s = MicroBatchStream([5, 9, 3, 7, 2, 8, 4] * 3, 16, 1, seed=3)
    n0 = len(s.plan(0))
    assert s.locate(n0 + 1) == (1, 1) and s[n0] == s.plan(1)[0]
    assert micro_batches_per_step(TrainArgs(micro_batches_per_step=6), 21, n0, 2) == 6
    with pytest.raises(ValueError, match="multiple of the world size"):
        micro_batches_per_step(TrainArgs(micro_batches_per_step=3), 21, n0, 2)
    assert micro_batches_per_step(TrainArgs(global_batch_size=8), 21, 7, 2) % 2 == 0


def test_ds_config_files_fill_every_auto():
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    for name in ("zero2", "zero3", "zero3_offload"):
        cfg = fill_ds_config(load_ds_config(os.path.join(REPO, "ds_configs", f"{name}.json")), micro_rows=1, gas=4,
                             world=2, lr=2e-4, weight_decay=0.01, warmup_steps=5, total_steps=100,
                             max_grad_norm=1.0, device=torch.device("cpu"), hidden_size=64)
        assert cfg["train_batch_size"] == 8 and cfg["bf16"]["enabled"] is False
        assert cfg["scheduler"]["params"]["total_num_steps"] == 102  # 2 past the last step: see ds_config


def test_nonfinite_guard_counts_runs():
    from dhrd.engine.step import NonFiniteGuard, TrainingDiverged

    g = NonFiniteGuard(2)
    g.update(False, 1)
    g.update(True, 2)
    g.update(False, 3)
    with pytest.raises(TrainingDiverged, match="2 consecutive"):
        g.update(False, 4)
    assert g.total == 3


def test_rationale_only_is_evaluated_by_cot_decoding(tmp_path):
    """beta 0 trains no classifier: --eval_mode auto evaluates by letting the LM head write
    the rationale and answer. On the cue task (the rationale copies the premise's cue,
    then says yes/no) a 64-wide model learns the copy in 100 steps (the 32-wide default
    stays at chance), so the CoT answers are right; the untrained classifier is not scored."""
    paths = write_task(tmp_path / "data", n_eval=32)
    model = write_model(tmp_path / "model", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=4)
    out = tmp_path / "rationale_only"
    proc = run_train(model, paths, out, "--max_steps", 100, "--micro_batches_per_step", 4, "--lr", 1e-2,
                     "--eval_every", 50, "--method", "rationale_only", "--lm_sections", "rationale+answer",
                     "--cot_max_new_tokens", 24, "--export_final", "false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ev = json.load(open(out / "eval_results.json"))
    m = ev["metrics"]
    assert "accuracy" not in m and set(m) >= {"cot_accuracy", "cot_finished"}
    assert m["cot_finished"] >= 0.9, m  # it learned to close the rationale with <ANS>
    assert m["cot_accuracy"] >= 0.8, m  # 1.0 when written; chance is 0.5
    assert [h["step"] for h in ev["history"]] == [50, 100]


def test_eval_mode_both_reports_agreement_of_the_heads(setup):
    root, paths, model = setup
    out = root / "both"
    proc = run_train(model, paths, out, "--max_steps", 2, "--micro_batches_per_step", 2, "--method", "dhrd",
                     "--eval_mode", "both", "--cot_max_new_tokens", 4, "--cot_batch_size", 5,
                     "--peak_tflops", 0.5)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.load(open(out / "eval_results.json"))["metrics"]
    assert set(m) >= {"accuracy", "cot_accuracy", "cot_finished", "cot_agreement"}
    assert all(0.0 <= m[k] <= 1.0 for k in ("accuracy", "cot_accuracy", "cot_agreement"))
    # a given peak gives MFU on any device: achieved model TFLOP/s over it
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"train"' in line]
    assert all(r["perf/mfu"] == pytest.approx(r["perf/model_tflops_per_device"] / 0.5) for r in rows)
