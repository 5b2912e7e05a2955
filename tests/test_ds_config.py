"""dhrd.ds_config: the TORCH_CUDA_ARCH_LIST fix that lets DeepSpeed JIT-build FusedAdam."""

from __future__ import annotations

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


def _filled(world=1, device="cpu", **changes):
    import torch

    from dhrd.engine.ds_config import fill_ds_config, load_ds_config

    cfg = load_ds_config(None)
    cfg.update(changes)
    return fill_ds_config(cfg, micro_rows=1, gas=2, world=world, lr=1e-3, weight_decay=0.0, warmup_steps=1,
                          total_steps=4, max_grad_norm=1.0, device=torch.device(device))


def test_auto_stage_is_0_for_one_fp32_process_and_2_otherwise():
    """The default config's ``"stage": "auto"``: one fp32 process has nothing to partition
    (stage 0); several processes, or half precision, get ZeRO-2. An explicit stage stays."""
    assert _filled()["zero_optimization"]["stage"] == 0
    assert _filled(world=2)["zero_optimization"]["stage"] == 2
    assert _filled(fp16={"enabled": True})["zero_optimization"]["stage"] == 2
    assert _filled(zero_optimization={"stage": 2})["zero_optimization"]["stage"] == 2
    assert _filled(world=4, zero_optimization={"stage": 3})["zero_optimization"]["stage"] == 3


def test_cpu_adamw_is_torchs_fused_kernel():
    opt = _filled()["optimizer"]["params"]
    assert opt["torch_adam"] is True and opt["fused"] is True
    assert "fused" not in _filled(zero_optimization={"stage": 3, "offload_optimizer": {"device": "cpu"}})[
        "optimizer"]["params"]
