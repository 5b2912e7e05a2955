"""The chunked (pure PyTorch) fused LM loss against the unfused reference: loss terms and
gradients w.r.t. hidden, LM weight (and bias) and class logits.

Tolerances (max |got - want| / max |want| over each tensor):
- fp64: 1e-10 (the same math; proves the options' formulas and gradients);
- fp32: 2e-5 (summation order differs: chunked sums of matmul products);
- bf16: both the chunked loss and the bf16 reference are compared with an fp64 oracle on
  the same bf16-rounded inputs: within 5e-2 (at logits of size ~8 the bf16 reference
  itself is off by up to 9% on the weight gradient, the chunked loss by 3%), and the chunked error at most 1.5x the
  reference's own error plus 2e-3 (bf16 has ~3 significant digits; the chunked loss
  accumulates the weight gradient in fp32, so it is usually the more accurate one).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dhrd.loss import IMPLEMENTATIONS, chunked, dual_head_loss, resolve_impl
from tests.loss.loss_cases import OPTIONS, assert_close, check_bf16, make_inputs, rel_err, run


@pytest.mark.parametrize("opt", sorted(OPTIONS))
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_fp64_exact(opt, chunk_size, bias):
    # logit_scale 8: logits reach well past the soft cap, so capping changes the result
    inputs = make_inputs(40, 16, 300, dtype=torch.float64, logit_scale=8.0, bias=bias)
    want = run("reference", inputs, **OPTIONS[opt])
    got = run("chunked", inputs, chunk_size=chunk_size, **OPTIONS[opt])
    assert_close(got, want, 1e-10)


def test_options_change_the_loss():
    """Guard against options silently ignored by both paths."""
    inputs = make_inputs(40, 16, 300, dtype=torch.float64, logit_scale=8.0)
    plain = run("chunked", inputs)["lm"]
    for name, opts in OPTIONS.items():
        if name != "plain":
            assert abs(float(run("chunked", inputs, **opts)["lm"] - plain)) > 1e-4, name


@pytest.mark.parametrize("opt", ["plain", "all"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (1.0, 0.0)])
def test_fp32(opt, alpha, beta):
    inputs = make_inputs(64, 32, 1000, logit_scale=4.0)
    kw = dict(alpha=alpha, beta=beta, **OPTIONS[opt])
    assert_close(run("chunked", inputs, chunk_size=9, **kw), run("reference", inputs, **kw), 2e-5)


@pytest.mark.parametrize("opt", sorted(OPTIONS))
def test_bf16(opt):
    inputs = make_inputs(64, 32, 1000, dtype=torch.bfloat16, logit_scale=8.0, bias=True)
    check_bf16("chunked", inputs, chunk_size=9, **OPTIONS[opt])


@pytest.mark.parametrize("vocab", [49152, 262144])
def test_large_vocab_fp32(vocab):
    inputs = make_inputs(24, 64, vocab, logit_scale=4.0)
    opts = {"logit_softcap": 3.0, "label_smoothing": 0.1}
    assert_close(run("chunked", inputs, chunk_size=8, **opts), run("reference", inputs, **opts),
                 2e-5)


@pytest.mark.parametrize("vocab", [49152, 262144])
def test_large_vocab_bf16(vocab):
    inputs = make_inputs(24, 64, vocab, dtype=torch.bfloat16, logit_scale=4.0)
    check_bf16("chunked", inputs, logit_softcap=3.0, z_loss=1e-4)   # default chunking (memory budget)


def test_all_ignored_rows_between_chunks():
    """Supervised rows scattered among ignored ones: only they are projected, and the
    hidden gradient of ignored rows is exactly zero."""
    inputs = make_inputs(60, 16, 500, ignore_every=0)
    inputs["lm_targets"].view(-1)[torch.arange(60) % 5 != 2] = -100
    got = run("chunked", inputs, chunk_size=4)
    assert_close(got, run("reference", inputs), 2e-5)
    rows = (inputs["lm_targets"].view(-1) == -100)
    assert torch.all(got["grad_hidden"].view(60, 16)[rows] == 0)


def test_custom_ignore_index():
    inputs = make_inputs(40, 16, 300)
    inputs["lm_targets"][inputs["lm_targets"] == -100] = 299
    inputs["cls_labels"][inputs["cls_labels"] == -100] = -1
    inputs["lm_targets"].view(-1)[::4] = -1
    assert_close(run("chunked", inputs, ignore_index=-1, chunk_size=5),
                 run("reference", inputs, ignore_index=-1), 2e-5)


@pytest.mark.parametrize("global_counts", [False, True])
def test_zero_supervised_tokens(global_counts):
    """A rank/micro-batch with nothing to supervise: LM loss 0, and zero (not None)
    gradients for hidden and the weight, so ZeRO-3's gradient hooks fire on every rank."""
    inputs = make_inputs(20, 16, 300, ignore_every=-1, bias=True)
    counts = {"n_lm_tokens": 37, "n_cls": 5} if global_counts else {}
    got = run("chunked", inputs, **counts)
    assert_close(got, run("reference", inputs, **counts), 1e-6)
    assert float(got["lm"]) == 0.0
    for k in ("grad_hidden", "grad_lm_weight", "grad_lm_bias"):
        assert got[k] is not None and torch.all(got[k] == 0), k
    assert got["grad_cls_logits"].abs().sum() > 0


def test_global_counts_tensor_and_alpha_zero():
    inputs = make_inputs(40, 16, 300)
    kw = {"n_lm_tokens": torch.tensor(91), "n_cls": torch.tensor(7.0)}
    assert_close(run("chunked", inputs, chunk_size=6, **kw), run("reference", inputs, **kw), 2e-5)
    got = run("chunked", inputs, alpha=0.0)
    assert_close(got, run("reference", inputs, alpha=0.0), 1e-6)
    assert got["grad_lm_weight"] is None and float(got["lm"]) == 0.0


def test_no_grad_and_frozen_weight():
    inputs = make_inputs(40, 16, 300)
    want = run("reference", inputs)
    with torch.no_grad():
        out = IMPLEMENTATIONS["chunked"](*(inputs[k] for k in ("hidden", "lm_weight", "lm_targets",
                                                              "cls_logits", "cls_labels")))
    assert rel_err(out.total, want["total"]) < 1e-6
    h = inputs["hidden"].clone().requires_grad_()
    IMPLEMENTATIONS["chunked"](h, inputs["lm_weight"], inputs["lm_targets"], inputs["cls_logits"],
                               inputs["cls_labels"]).total.backward()     # weight frozen
    assert rel_err(h.grad, want["grad_hidden"]) < 2e-5


def test_backward_twice_is_refused():
    inputs = make_inputs(20, 16, 100)
    h = inputs["hidden"].clone().requires_grad_()
    loss = IMPLEMENTATIONS["chunked"](h, inputs["lm_weight"], inputs["lm_targets"],
                                      inputs["cls_logits"], inputs["cls_labels"]).total
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_never_materialises_all_logits(dtype):
    """No tensor anywhere in forward + backward is larger than one chunk of logits or the
    weight gradient; the reference's [N x V] logits are 8x a chunk here."""
    n, hdim, vocab, chunk = 64, 8, 4000, 8
    inputs = make_inputs(n, hdim, vocab, dtype=dtype, ignore_every=0)
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v)
              for k, v in inputs.items()}
    with LargestTensor() as mode:
        IMPLEMENTATIONS["chunked"](**leaves, chunk_size=chunk).total.backward()
    assert mode.numel <= max(chunk * vocab, vocab * hdim) < n * vocab
    with LargestTensor() as mode:
        IMPLEMENTATIONS["reference"](**leaves).total.backward()
    assert mode.numel >= n * vocab                       # the check would see it


def test_chunk_rows_from_memory_budget():
    opts = chunked.CEOptions()
    step = chunked.TorchChunkStep
    assert chunked.chunk_rows(1000, 1000, torch.float32, opts, step, 4000 * 100) == 100
    # balanced: 250 rows in chunks of <= 100 -> 3 chunks of 84
    assert chunked.chunk_rows(250, 1000, torch.float32, opts, step, 4000 * 100) == 84
    # bf16 needs an fp32 work copy too: 6 bytes a logit
    assert chunked.chunk_rows(1000, 1000, torch.bfloat16, opts, step, 6000 * 100) == 100
    assert chunked.chunk_rows(1000, 10**6, torch.float32, opts, step, 1) == 1
    assert chunked.chunk_rows(1000, 1000, torch.float32, opts, step, 1, chunk_size=17) == 17
    # a floor on the rows (the weight-gradient accumulator's traffic), balanced too
    assert chunked.chunk_rows(1000, 1000, torch.float32, opts, step, 4000, min_rows=256) == 250


def test_resolve_impl():
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    assert resolve_impl("auto", "cpu") == "chunked"
    want_cuda = "triton" if "triton" in IMPLEMENTATIONS else "chunked"
    assert resolve_impl("auto", torch.device("cuda")) == want_cuda
    assert resolve_impl("auto", "cuda:1") == want_cuda
    assert resolve_impl("reference", "cpu") == "reference"
    assert resolve_impl("chunked", "cuda") == "chunked"
    with pytest.raises(ValueError, match="unknown loss implementation 'fused'"):
        resolve_impl("fused", "cpu")
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_impl("triton", "cpu")


def test_entry_point_dispatch():
    inputs = make_inputs(20, 16, 100)
    args = [inputs[k] for k in ("hidden", "lm_weight", "lm_targets", "cls_logits", "cls_labels")]
    a = dual_head_loss(*args, logit_softcap=4.0)                # auto -> chunked on CPU
    b = dual_head_loss(*args, impl="reference", logit_softcap=4.0)
    assert rel_err(a.total, b.total) < 1e-6
    with pytest.raises(ValueError, match="unknown loss implementation"):
        dual_head_loss(*args, impl="nope")


def test_bf16_block_weight_gradient(monkeypatch):
    """The half-precision block path of the weight-gradient accumulator (CUDA's fallback)."""
    monkeypatch.setattr(chunked.WeightGradAccumulator, "FP32_GEMM", False)
    monkeypatch.setattr(chunked.WeightGradAccumulator, "BLOCK_BYTES", 32 * 6 * 300)  # 4 blocks
    inputs = make_inputs(64, 32, 1000, dtype=torch.bfloat16, logit_scale=8.0, bias=True)
    check_bf16("chunked", inputs, chunk_size=9, **OPTIONS["all"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (7, 5), (300, 129)])
def test_cast_in_place_rounds_like_to_inside_the_same_storage(dtype, shape):
    """The backward's weight-gradient cast: equal to ``.to(dtype)``, no second buffer."""
    from dhrd.loss.chunked import cast_in_place

    src = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3
    want = src.to(dtype)
    got = cast_in_place(src, dtype, block_bytes=256)  # many blocks
    assert got.dtype == dtype and got.shape == want.shape and torch.equal(got, want)
    assert got.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
