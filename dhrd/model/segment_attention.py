"""Attention for packed rows that costs what the segments cost, not what the row costs.

A packed row isolates its segments by restarting position ids; transformers turns that
into a block-diagonal [T x T] mask for ``sdpa``, and the kernel then computes (and
masks away) all T^2 scores: a 1024-token row of six 170-token segments does ~6x the
attention arithmetic of the segments alone, and a masked CPU kernel is slower still.
``flash_attention_2`` solves this on CUDA (varlen from the position ids) where
flash-attn is installed; this implementation, ``attn_implementation="dhrd_segments"``,
does it without it. On CUDA in bf16/fp16 it makes ONE call to torch's own varlen flash
kernel (``torch.nn.attention.varlen.varlen_attn``) for every segment of every row, with
cumulative segment lengths from the position ids; elsewhere (CPU) one causal
``scaled_dot_product_attention`` call per segment, no mask. Where it cannot be exact (no
position ids, decoding with a cache, dropout, soft-capping, a position bias, a sliding
window shorter than the row, non-causal modules, a padding mask) it hands the call to
transformers' own ``sdpa`` with its mask, so results never depend on it. On CUDA without
a usable varlen kernel (fp32, an old torch) it hands packed rows to ``sdpa`` as well:
there many small per-segment calls a layer cost more than sdpa's masked one (measured:
docs/performance.md, "Defaults").
"""

from __future__ import annotations

import functools
import inspect
import weakref

import torch
import torch.nn.functional as F

NAME = "dhrd_segments"


def segment_bounds(pos: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of the runs where position ids go up by one (transformers' own
    packed-sequence rule, ``find_packed_sequence_indices``)."""
    breaks = (torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1).tolist()
    edges = [0, *breaks, pos.numel()]
    return list(zip(edges[:-1], edges[1:]))


def _exact_here(module, query, key, dropout, kwargs) -> bool:
    t = query.shape[2]
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    return (kwargs.get("position_ids") is not None and t > 1 and key.shape[2] == t and not dropout
            and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
            and getattr(module, "is_causal", True) and not (window and window < t))


@torch.compiler.disable  # segment planning is Python (a device sync, a cache): eager under --compile
def segment_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                         scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query [B, Hq, T, D], key/value
    [B, Hkv, T, D]; returns ([B, T, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan = None
    if _exact_here(module, query, key, dropout, kwargs):
        plan = _packed_plan(kwargs["position_ids"], attention_mask, query.shape[0], query.shape[2])
    on_cuda = query.device.type == "cuda"
    if plan is None or (on_cuda and not varlen_usable(query.device, query.dtype)):  # padding, custom masks
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if on_cuda:
        return varlen_forward(query, key, value, plan, scaling), None
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, row in enumerate(plan.bounds):
        q, k, v = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        rows.append(torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                              is_causal=True, scale=scaling, enable_gqa=gqa)
                               for s, e in row], dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


class SegmentPlan:
    """One packed batch's segments: per row the (start, end) of each segment, and, built on
    first use, the varlen kernel's cumulative lengths on the device with the longest
    segment (one host-to-device copy per batch, not one per layer)."""

    def __init__(self, bounds: list[list[tuple[int, int]]]):
        self.bounds = bounds
        self._cu: tuple[torch.Tensor, int] | None = None

    def cu(self, t: int, device: torch.device) -> tuple[torch.Tensor, int]:
        if self._cu is None or self._cu[0].device != device:
            ends = [r * t + e for r, row in enumerate(self.bounds) for _, e in row]
            lens = [e - s for row in self.bounds for s, e in row]
            self._cu = (torch.tensor([0, *ends], dtype=torch.int32, device=device), max(lens))
        return self._cu


# one packed batch goes through every layer with the same position-id and mask tensors:
# plan its segments (a device sync) and check its mask once, not once a layer
_LAST: dict = {}


def _packed_plan(pos: torch.Tensor, mask: torch.Tensor | None, batch: int, t: int) -> SegmentPlan | None:
    """The rows' segment plan when the mask says no more than the position ids, else None."""
    key = (_tensor_key(pos), _tensor_key(mask), batch, t)
    if _LAST.get("key") is not None and all(map(_same, _LAST["key"], key)):
        return _LAST["plan"]
    full = pos.expand(batch, -1) if pos.shape[0] == 1 else pos
    bounds = [segment_bounds(full[b]) for b in range(batch)]
    plan = SegmentPlan(bounds) if mask_is_segments(mask, bounds, t) else None
    _LAST.update(key=key, plan=plan)
    return plan


def _tensor_key(x: torch.Tensor | None):
    """Identity and in-place version of a tensor, without keeping it alive."""
    return None if x is None else (weakref.ref(x), x._version)


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return a[0]() is not None and a[0]() is b[0]() and a[1] == b[1]
    return a == b


@functools.lru_cache(maxsize=None)
def _varlen_api():
    """torch's varlen flash attention and the keywords this torch gives it, or None: torch
    2.9/2.10 take ``is_causal``; later ones ``window_size=(-1, 0)``, ``scale`` and
    ``enable_gqa``."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" not in params and "window_size" not in params:
        return None
    return varlen_attn, frozenset(params)


def varlen_forward(query, key, value, plan: SegmentPlan, scaling):
    """All segments of all rows in one varlen call: [B, H, T, D] in, [B, T, Hq, Dv] out."""
    fn, params = _varlen_api()
    b, hq, t, d = query.shape
    hkv = key.shape[1]
    cu = plan.cu(t, query.device)
    q = query.transpose(1, 2).reshape(b * t, hq, d)
    k = key.transpose(1, 2).reshape(b * t, hkv, d)
    v = value.transpose(1, 2).reshape(b * t, hkv, value.shape[-1])
    kw = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if hq != hkv:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(hq // hkv, dim=1) for x in (k, v))
    if scaling is not None and abs(scaling - d ** -0.5) > 1e-12 * scaling:
        if "scale" in params:
            kw["scale"] = scaling
        else:
            q = q * (scaling * d ** 0.5)
    out = fn(q, k, v, cu[0], cu[0], cu[1], cu[1], **kw)
    return out.view(b, t, hq, value.shape[-1])


def varlen_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Checked once per device and dtype: torch has the varlen kernel, it runs here, and on
    two packed segments (GQA, forward and backward) it equals causal sdpa run on each."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or _varlen_api() is None:
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return _varlen_checked(index, dtype)  # "cuda" and "cuda:0" are one device: one check


@functools.lru_cache(maxsize=None)
def _varlen_checked(index: int, dtype: torch.dtype) -> bool:
    device = torch.device("cuda", index)
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(1, 4, 48, 64, device=device, dtype=dtype, generator=g, requires_grad=True)
        k, v = (torch.randn(1, 2, 48, 64, device=device, dtype=dtype, generator=g, requires_grad=True)
                for _ in range(2))
        plan = SegmentPlan([[(0, 20), (20, 48)]])
        got = varlen_forward(q, k, v, plan, None)
        want = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                         enable_gqa=True) for s, e in plan.bounds[0]], 2)
        want = want.transpose(1, 2)
        got.float().sum().backward()
        ok = bool(torch.allclose(got.float(), want.float(), atol=2e-2)) and q.grad is not None
        return ok and bool(torch.isfinite(q.grad).all())
    except Exception:  # noqa: BLE001 - any failure means: not usable on this device
        return False


def mask_is_segments(mask: torch.Tensor | None, bounds: list[list[tuple[int, int]]], t: int) -> bool:
    """Whether the mask transformers built says no more than the position ids do: none
    (plain causal), or exactly block-diagonal causal over the segments. A padding mask
    (left padding, say) or any other mask does not, and goes to sdpa."""
    if mask is None:
        return True
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (t, t):
        return False
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril_()
    for b, row in enumerate(bounds):
        seg = torch.empty(t, dtype=torch.long, device=mask.device)
        for i, (s, e) in enumerate(row):
            seg[s:e] = i
        want = causal & (seg[:, None] == seg[None, :])
        if not torch.equal(mask[b if mask.shape[0] > 1 else 0, 0], want):
            return False
    return True


def register() -> str:
    """Make ``attn_implementation="dhrd_segments"`` known to transformers (idempotent);
    its mask function is sdpa's, for the calls handed back to sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def attention_path(config, device: torch.device) -> str:
    """What a packed row's attention runs as, for the start-up log."""
    name = getattr(config, "_attn_implementation", None) or "?"
    if name != NAME:
        return name
    if device.type != "cuda":
        return f"{NAME} (one sdpa call per segment)"
    usable = varlen_usable(device, torch.bfloat16)
    return f"{NAME} ({'torch varlen flash kernel, bf16/fp16' if usable else 'sdpa: no usable varlen kernel here'})"


def resolve(name: str) -> str:
    """``auto``: this implementation on CPU (faster than masked sdpa for a packed row,
    forward + backward: docs/performance.md, "Defaults") and on CUDA where torch's varlen kernel runs
    (bf16), else ``sdpa``."""
    if name == "auto":
        cuda = torch.cuda.is_available()
        name = NAME if not cuda or varlen_usable(torch.device("cuda", torch.cuda.current_device()),
                                                 torch.bfloat16) else "sdpa"
    if name == NAME:
        register()
    return name
