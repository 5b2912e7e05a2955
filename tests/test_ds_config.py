"""dhrd.ds_config: the TORCH_CUDA_ARCH_LIST fix that lets DeepSpeed JIT-build FusedAdam."""

from __future__ import annotations

import math
import os

import pytest

from dhrd.engine.ds_config import sanitize_cuda_arch_list


@pytest.mark.parametrize("given, want", [
    ("9.0a", "9.0"),                      # the H200 image's value
    ("8.0;9.0a+PTX", "8.0;9.0+PTX"),
    ("10.0a 12.0f", "10.0 12.0"),
])
def test_arch_specific_entries_become_plain(given, want):
    env = {"TORCH_CUDA_ARCH_LIST": given}
    assert sanitize_cuda_arch_list(env) == given
    assert env["TORCH_CUDA_ARCH_LIST"] == want


@pytest.mark.parametrize("env", [{}, {"TORCH_CUDA_ARCH_LIST": ""}, {"TORCH_CUDA_ARCH_LIST": "8.6;9.0+PTX"}])
def test_plain_lists_are_left_alone(env):
    before = dict(env)
    assert sanitize_cuda_arch_list(env) is None
    assert env == before


def test_deepspeed_builder_parses_the_result(monkeypatch):
    """DeepSpeed's own JIT arch parser (the line that raised "invalid literal for int()
    with base 10: '0a'" on the H200) accepts what we write, and still rejects the raw value."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")  # the builder writes it back: restored after
    b = FusedAdamBuilder()
    b.jit_mode = True
    b._jit_arch_list = "9.0a"
    with pytest.raises(ValueError, match="0a"):
        b.compute_capability_args()
    assert sanitize_cuda_arch_list() == "9.0a"
    b._jit_arch_list = None  # what jit_load captures from the environment
    b.compute_capability_args()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0+PTX"  # JIT adds +PTX to the highest arch


def _filled(world=1, device="cpu", autocast="none", **changes):
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    cfg = load_ds_config(None)
    cfg.update(changes)
    return fill_ds_config(cfg, micro_rows=1, gas=2, world=world, lr=1e-3, weight_decay=0.0, warmup_steps=1,
                          total_steps=4, max_grad_norm=1.0, device=torch.device(device), autocast=autocast)


def test_auto_stage_is_0_for_one_fp32_process_1_for_one_half_process_and_2_otherwise():
    """The default config's ``"stage": "auto"``: one fp32 process has nothing to partition
    (stage 0); one half-precision process keeps fp32 master weights at stage 1; several
    processes get ZeRO-2. An explicit stage stays."""
    assert _filled()["zero_optimization"]["stage"] == 0
    assert _filled(world=2)["zero_optimization"]["stage"] == 2
    assert _filled(fp16={"enabled": True})["zero_optimization"]["stage"] == 1
    assert _filled(world=2, fp16={"enabled": True})["zero_optimization"]["stage"] == 2
    assert _filled(zero_optimization={"stage": 2})["zero_optimization"]["stage"] == 2
    assert _filled(world=4, zero_optimization={"stage": 3})["zero_optimization"]["stage"] == 3


def test_cpu_adamw_is_torchs_fused_kernel():
    opt = _filled()["optimizer"]["params"]
    assert opt["torch_adam"] is True and opt["fused"] is True
    assert "fused" not in _filled(zero_optimization={"stage": 3, "offload_optimizer": {"device": "cpu"}})[
        "optimizer"]["params"]


def _lrs(cfg: dict, steps: int) -> list[float]:
    """The lr of updates 1..steps under the filled config's scheduler, built the way
    DeepSpeed builds it (lr_schedules.<type>(optimizer, **params)) and started as the
    engine starts it."""
    import torch
    from deepspeed.runtime import lr_schedules

    from dhrd.engine.ds_config import start_warmup_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg["optimizer"]["params"]["lr"])
    sched = getattr(lr_schedules, cfg["scheduler"]["type"])(opt, **cfg["scheduler"]["params"])
    start_warmup_schedule(cfg, sched)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["auto", "cosine", "linear", "constant"])
def test_lr_schedule_shapes(schedule):
    """--lr_schedule picks the decay after the linear warm-up (here 2 of 10 updates, lr 1e-3):
    linear falls by equal steps toward 0 as transformers' get_linear_schedule_with_warmup
    does, cosine (the default) along the half cosine, constant stays at the peak."""
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    cfg = fill_ds_config(load_ds_config(None), micro_rows=1, gas=1, world=1, lr=1e-3, weight_decay=0.0,
                         warmup_steps=2, total_steps=10, max_grad_norm=1.0, device=torch.device("cpu"),
                         lr_schedule=schedule)
    lr = _lrs(cfg, 10)
    assert lr[0] == pytest.approx(5e-4)  # warm-up: update k at k / 2 of the peak
    decay = lr[1:]
    if schedule == "constant":
        assert cfg["scheduler"]["type"] == "WarmupLR" and decay == pytest.approx([1e-3] * 9)
        return
    assert all(b < a for a, b in zip(decay, decay[1:])) and decay[-1] > 0
    steps = [a - b for a, b in zip(decay, decay[1:])]
    if schedule == "linear":
        assert cfg["scheduler"]["type"] == "WarmupDecayLR" and decay[0] == pytest.approx(1e-3)
        assert steps == pytest.approx([1e-3 / 10] * 8)  # (12 - k) / (12 - 2) of the peak
    else:
        assert cfg["scheduler"]["type"] == "WarmupCosineLR"
        assert decay[0] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 10)) / 2)  # DeepSpeed's first decay step
        assert steps[0] < steps[3]  # cosine: slow at first, steepest mid-way


def test_lr_schedule_conflicts_with_a_named_scheduler_are_refused():
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    def fill(cfg, schedule):
        return fill_ds_config(cfg, micro_rows=1, gas=1, world=1, lr=1e-3, weight_decay=0.0, warmup_steps=2,
                              total_steps=10, max_grad_norm=1.0, device=torch.device("cpu"), lr_schedule=schedule)

    zero2 = load_ds_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "ds_configs", "zero2.json"))
    assert fill(zero2, "auto")["scheduler"]["type"] == "WarmupCosineLR"  # a named scheduler is kept
    assert fill(zero2, "cosine")["scheduler"]["type"] == "WarmupCosineLR"
    with pytest.raises(ValueError, match="--lr_schedule linear .*names scheduler WarmupCosineLR"):
        fill(zero2, "linear")
    with pytest.raises(ValueError, match="has no scheduler"):
        fill({k: v for k, v in load_ds_config(None).items() if k != "scheduler"}, "linear")
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        fill(load_ds_config(None), "step")
    # a user's WarmupLR (constant after warm-up) takes no total_num_steps: DeepSpeed would reject it
    cfg = load_ds_config(None)
    cfg["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": "auto", "warmup_type": "linear"}}
    filled = fill(cfg, "auto")
    assert "total_num_steps" not in filled["scheduler"]["params"]
    assert _lrs(filled, 4) == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])


def test_train_args_check_lr_schedule():
    from dhrd.config import TrainArgs

    assert TrainArgs(lr_schedule="linear").lr_schedule == "linear"
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainArgs(lr_schedule="exponential")


def test_autocast_bf16_is_deepspeeds_torch_autocast_with_fp32_weights():
    """--autocast bf16 writes DeepSpeed's torch_autocast section and keeps its bf16/fp16
    modes (half-precision weights) off; asking for both is refused, not resolved silently."""
    cfg = _filled(autocast="bf16")
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert cfg["bf16"]["enabled"] is False and cfg["zero_optimization"]["stage"] == 0  # fp32 weights: stage 0
    assert "torch_autocast" not in _filled()
    with pytest.raises(ValueError, match="enables bf16"):
        _filled(autocast="bf16", bf16={"enabled": True})
    with pytest.raises(ValueError, match="enables fp16"):
        _filled(autocast="bf16", fp16={"enabled": True})
    with pytest.raises(ValueError, match="torch_autocast section"):
        _filled(autocast="bf16", torch_autocast={"enabled": True, "dtype": "float16"})
    with pytest.raises(ValueError, match="autocast='fp8'"):
        _filled(autocast="fp8")
