"""Inputs and comparisons shared by the fused-loss tests (test_chunked, test_triton)."""

from __future__ import annotations

import torch

from dhrd.loss import IMPLEMENTATIONS

IGNORE = -100

OPTIONS = {
    "plain": {},
    "softcap": {"logit_softcap": 5.0},
    "smoothing": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-3},
    "all": {"logit_softcap": 5.0, "label_smoothing": 0.2, "z_loss": 1e-3},
}


def make_inputs(n_rows: int, hdim: int, vocab: int, *, dtype=torch.float32, device="cpu",
                ignore_every: int = 3, logit_scale: float = 1.0, bias: bool = False,
                n_segments: int = 4, n_classes: int = 3, seed: int = 0) -> dict:
    """hidden [2, n_rows/2, H]; every ``ignore_every``-th target ignored (0: none, -1: all);
    logits of typical size ``logit_scale``; one class label ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n_rows // 2, hdim, generator=g)
    weight = torch.randn(vocab, hdim, generator=g) * (logit_scale / hdim ** 0.5)
    targets = torch.randint(0, vocab, (2, n_rows // 2), generator=g)
    if ignore_every == -1:
        targets[:] = IGNORE
    elif ignore_every:
        targets.view(-1)[::ignore_every] = IGNORE
    cls_logits = torch.randn(n_segments, n_classes, generator=g)
    cls_labels = torch.randint(0, n_classes, (n_segments,), generator=g)
    cls_labels[-1] = IGNORE
    out = {"hidden": hidden, "lm_weight": weight, "lm_targets": targets,
           "cls_logits": cls_logits, "cls_labels": cls_labels}
    if bias:
        out["lm_bias"] = torch.randn(vocab, generator=g) * 0.5
    return {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in out.items()}


FLOAT_INPUTS = ("hidden", "lm_weight", "cls_logits", "lm_bias")


def run(impl, inputs: dict, dtype=None, **options) -> dict:
    """Loss terms and the gradients of every float input, on fresh leaf copies (cast to
    ``dtype`` when given); ``impl`` a registered name or the function itself."""
    fn = IMPLEMENTATIONS[impl] if isinstance(impl, str) else impl
    leaves = {}
    for k, v in inputs.items():
        if v.is_floating_point():
            v = v.detach().to(dtype or v.dtype).clone().requires_grad_()
        leaves[k] = v
    bias = leaves.pop("lm_bias", None)
    out = fn(leaves["hidden"], leaves["lm_weight"], leaves["lm_targets"], leaves["cls_logits"],
             leaves["cls_labels"], lm_bias=bias, **options)
    out.total.backward()
    leaves["lm_bias"] = bias
    res = {"total": out.total.detach(), "cls": out.cls, "lm": out.lm}
    for k in FLOAT_INPUTS:
        if leaves[k] is not None:
            res["grad_" + k] = leaves[k].grad
    return res


def rel_err(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| / max |b| (in fp64); 0 when both are None."""
    if a is None or b is None:
        assert a is None and b is None, "one gradient is None and the other is not"
        return 0.0
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_close(got: dict, want: dict, tol: float) -> dict:
    """Every loss term and gradient of ``want`` within ``tol`` (relative, see rel_err);
    returns the errors."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    errs = {k: rel_err(got[k], want[k]) for k in want}
    bad = {k: e for k, e in errs.items() if not e <= tol}
    assert not bad, f"over tolerance {tol}: {bad} (all: {errs})"
    return errs


def check_bf16(impl, inputs: dict, chunk_size=None, **options) -> None:
    """``impl`` on bf16 ``inputs`` against an fp64 oracle on the same (rounded) inputs:
    within 5e-2, and at most 1.5x the bf16 reference's own error plus 2e-3."""
    oracle = run("reference", inputs, dtype=torch.float64, **options)
    ref_err = {k: rel_err(v, oracle[k]) for k, v in run("reference", inputs, **options).items()}
    errs = assert_close(run(impl, inputs, chunk_size=chunk_size, **options), oracle, 5e-2)
    worse = {k: (e, ref_err[k]) for k, e in errs.items() if e > 1.5 * ref_err[k] + 2e-3}
    assert not worse, f"{impl} in bf16 less accurate than the bf16 reference: {worse}"
