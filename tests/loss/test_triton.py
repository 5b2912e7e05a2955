"""The Triton (CUDA) fused LM loss against the unfused reference.

On a CUDA machine the tests run on the GPU. Without CUDA they skip, except one, which
reruns this file in a subprocess under Triton's CPU interpreter (``TRITON_INTERPRET=1``,
CPU tensors, a small kernel block so the multi-block sweeps and masking run): the
kernel's math is then checked on any machine that has triton installed.

Tolerances as in test_chunked: fp32 2e-5 relative to the largest entry; bf16 against an
fp64 oracle, 5e-2 and at most 1.5x the bf16 reference's own error plus 2e-3.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from dhrd.loss import IMPLEMENTATIONS, dual_head_loss, resolve_impl
from tests.loss.loss_cases import OPTIONS, assert_close, check_bf16, make_inputs, rel_err, run

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
HAVE_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if CUDA else "cpu"

needs_kernel = pytest.mark.skipif(not (CUDA or (INTERPRET and HAVE_TRITON)),
                                  reason="needs CUDA (or Triton's CPU interpreter: TRITON_INTERPRET=1)")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs CUDA")

@pytest.fixture(scope="module")
def triton_loss():
    from functools import partial

    from dhrd.loss import dual_head_loss, triton_kernels

    if INTERPRET and not CUDA:
        triton_kernels.MAX_BLOCK = 256       # several blocks per row, the last one masked
    return partial(dual_head_loss, impl=triton_kernels.triton_lm_term)


@needs_kernel
@pytest.mark.parametrize("opt", sorted(OPTIONS))
@pytest.mark.parametrize("bias", [False, True])
def test_fp32(triton_loss, opt, bias):
    inputs = make_inputs(32, 16, 1000, logit_scale=8.0, bias=bias, device=DEVICE)
    assert_close(run(triton_loss, inputs, chunk_size=7, **OPTIONS[opt]),
                 run("reference", inputs, **OPTIONS[opt]), 2e-5)


@needs_kernel
def test_zero_supervised_tokens(triton_loss):
    inputs = make_inputs(20, 16, 300, ignore_every=-1, device=DEVICE)
    got = run(triton_loss, inputs, n_lm_tokens=11)
    assert_close(got, run("reference", inputs, n_lm_tokens=11), 1e-6)
    assert got["grad_lm_weight"] is not None and torch.all(got["grad_lm_weight"] == 0)


@cuda_only
@pytest.mark.parametrize("opt", sorted(OPTIONS))
def test_bf16(triton_loss, opt):
    inputs = make_inputs(64, 32, 1000, dtype=torch.bfloat16, logit_scale=8.0, bias=True,
                         device=DEVICE)
    check_bf16(triton_loss, inputs, **OPTIONS[opt])


@cuda_only
@pytest.mark.parametrize("vocab", [49152, 262144])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocab(triton_loss, vocab, dtype):
    inputs = make_inputs(48, 64, vocab, dtype=dtype, logit_scale=4.0, device=DEVICE)
    opts = {"logit_softcap": 3.0, "label_smoothing": 0.1}
    if dtype == torch.float32:
        assert_close(run(triton_loss, inputs, chunk_size=16, **opts),
                     run("reference", inputs, **opts), 2e-5)
    else:
        check_bf16(triton_loss, inputs, **opts)


@cuda_only
def test_auto_selects_triton_on_cuda():
    assert "triton" in IMPLEMENTATIONS
    assert resolve_impl("auto", torch.device("cuda")) == "triton"
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    inputs = make_inputs(20, 16, 300, device=DEVICE)
    args = [inputs[k] for k in ("hidden", "lm_weight", "lm_targets", "cls_logits", "cls_labels")]
    assert rel_err(dual_head_loss(*args).total, dual_head_loss(*args, impl="reference").total) < 1e-5


@pytest.mark.skipif(CUDA or INTERPRET or not HAVE_TRITON,
                    reason="only without CUDA, with triton installed (the interpreter run)")
def test_kernel_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
