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
