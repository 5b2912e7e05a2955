"""Real multi-process DeepSpeed ZeRO-3 training on CPU (``deepspeed --num_gpus 2``)
of a tiny Llama: equality with one process, and kill -9 + ``--resume auto``."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest

from tests.distributed.train_helpers import REPO, child_env, losses, run_train, train_command, write_model, write_task  # noqa: E402

pytestmark = pytest.mark.distributed

STEPS = 16
# same GLOBAL step (8 micro-batches) on 1 and 2 processes
RUN = ["--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"), "--max_steps", STEPS,
       "--micro_batches_per_step", 8, "--lr", 3e-3, "--seed", 7]
# fp32 on CPU; the only difference between world sizes is the order of the gradient sums
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    return root, write_task(root / "data"), write_model(root / "model")


@pytest.fixture(scope="module")
def two_proc_run(setup):
    root, paths, model = setup
    out = root / "two"
    proc = run_train(model, paths, out, *RUN, nprocs=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_two_process_zero3_matches_one_process(setup, two_proc_run):
    root, paths, model = setup
    out2, proc2 = two_proc_run
    out1 = root / "one"
    proc1 = run_train(model, paths, out1, *RUN, nprocs=1)
    assert proc1.returncode == 0, proc1.stderr[-4000:]
    cfg = json.load(open(out2 / "config.json"))
    assert cfg["derived"]["world_size"] == 2 and cfg["derived"]["gradient_accumulation_steps"] == 4
    assert cfg["deepspeed"]["zero_optimization"]["stage"] == 3
    assert "[rank0]" in proc2.stderr and "[rank1]" in proc2.stderr
    l1, l2 = losses(out1), losses(out2)
    assert sorted(l1) == sorted(l2) == list(range(1, STEPS + 1))
    for s in l1:
        assert abs(l1[s] - l2[s]) <= TOL * max(1.0, abs(l1[s])), (s, l1[s], l2[s])
    g1, g2 = losses(out1, "train/grad_norm"), losses(out2, "train/grad_norm")
    assert all(abs(g1[s] - g2[s]) <= TOL * max(1.0, g1[s]) for s in g1)
    # consolidated export from the partitioned model equals the one-process export
    from safetensors.torch import load_file

    w1, w2 = load_file(out1 / "final" / "model.safetensors"), load_file(out2 / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    ev = json.load(open(out2 / "eval_results.json"))
    assert set(ev["metrics"]) == {"accuracy"}


def test_kill9_then_resume_auto_matches_uninterrupted(setup, two_proc_run):
    root, paths, model = setup
    ref = losses(two_proc_run[0])
    out = root / "killed"
    ckpts = out / "checkpoints"
    cmd = train_command(model, paths, out, *RUN, "--save_every", 3, "--keep_checkpoints", 2, nprocs=2)
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (ckpts / "latest").exists():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "final").exists()
    killed_at = max(losses(out))
    assert killed_at < STEPS

    resumed = run_train(model, paths, out, *RUN, "--save_every", 3, "--keep_checkpoints", 2,
                        "--resume", "auto", nprocs=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in ref:
        assert abs(got[s] - ref[s]) <= TOL * max(1.0, abs(ref[s])), (s, got[s], ref[s])
    tags = [t for t in os.listdir(ckpts) if t.startswith("step_")]
    assert len(tags) <= 2


def test_lora_under_zero3_two_processes(setup):
    """peft adapters on a ZeRO-3 partitioned backbone: trains, consolidates, merges."""
    root, paths, model = setup
    out = root / "lora"
    proc = run_train(model, paths, out, "--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"),
                     "--max_steps", 3, "--micro_batches_per_step", 4, "--lr", 1e-2, "--lora", "true", nprocs=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.load(open(out / "final" / "dhrd_config.json"))["lora_merged"] is True
    from safetensors.torch import load_file

    base, tuned = load_file(os.path.join(model, "model.safetensors")), load_file(out / "final" / "model.safetensors")
    q = "model.layers.1.self_attn.v_proj.weight"
    assert float((base[q] - tuned[q]).abs().max()) > 0


def test_cot_eval_under_zero3_two_processes_equals_one_process(setup):
    """CoT decoding under ZeRO-3 (generate with synced_gpus, batches sharded over ranks,
    a rank with no batch left decodes a dummy) predicts exactly what one process does.
    lr 0 keeps the weights at their (seeded, identical) init, so predictions must match
    exactly; 16 eval examples in batches of 6: 3 batches, rank 1 runs one dummy."""
    root, paths, model = setup
    args = ["--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"), "--max_steps", 1,
            "--micro_batches_per_step", 2, "--lr", 0.0, "--eval_mode", "both", "--cot_batch_size", 6,
            "--cot_max_new_tokens", 8, "--export_final", "false"]
    metrics = []
    shm_before = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))
    for n in (2, 1):
        out = root / f"cot{n}"
        proc = run_train(model, paths, out, *args, nprocs=n)
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics.append(json.load(open(out / "eval_results.json"))["metrics"])
    assert set(metrics[0]) >= {"accuracy", "cot_accuracy", "cot_finished", "cot_agreement"}
    assert metrics[0] == metrics[1]
    # DeepSpeed's CPU all-reduce buffers (~68 MB of RAM each) are not left in /dev/shm
    assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*")) <= shm_before


def test_exact_batching_same_steps_on_one_and_two_processes(setup):
    """--batching exact (the default without --micro_batches_per_step): every step holds
    exactly global_batch_size examples, padded with empty micro-batches to a fixed count;
    1 and 2 ZeRO-3 processes give the same losses (a rank may hold only padding)."""
    root, paths, model = setup
    run = ["--ds_config", os.path.join(REPO, "ds_configs", "zero3.json"), "--max_steps", 6, "--global_batch_size", 10,
           "--lr", 3e-3, "--seed", 5]
    outs = []
    for n in (1, 2):
        out = root / f"exact{n}"
        proc = run_train(model, paths, out, *run, nprocs=n)
        assert proc.returncode == 0, proc.stderr[-4000:]
        outs.append(out)
    cfg = json.load(open(outs[1] / "config.json"))
    assert cfg["derived"]["batching"].startswith("exact: 10 examples a step")
    assert cfg["derived"]["micro_batches_per_step"] % 2 == 0
    l1, l2 = losses(outs[0]), losses(outs[1])
    assert sorted(l1) == sorted(l2) == list(range(1, 7))
    for s in l1:
        assert abs(l1[s] - l2[s]) <= TOL * max(1.0, abs(l1[s])), (s, l1[s], l2[s])
    rows = [json.loads(x) for x in open(outs[0] / "metrics.jsonl") if '"train"' in x]
    assert all(r["perf/samples_per_s"] > 0 for r in rows)
