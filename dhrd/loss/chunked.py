"""Fused linear + cross-entropy for the LM term, chunk by chunk, in pure PyTorch.

The reference materialises the [N x V] logits of every supervised token, then autograd
keeps them and builds their gradient: at N=16k, V=152k that is ~10 GB twice. Here the
forward pass walks over chunks of supervised rows and, per chunk,

    logits = h_c @ W^T (+ b)                       matmul in the input dtype
    logits <- d sum_t loss_t / d logits            in place, softmax math in fp32
    grad_h[rows_c]  = dlogits @ W
    grad_W         += dlogits^T @ h_c              accumulated in fp32
    grad_b         += dlogits.sum(0)

so only one [chunk x V] buffer (plus an fp32 copy for half-precision inputs) ever exists.
The backward pass only scales the stored gradients by ``grad_output / n_lm_tokens``.

The per-chunk "logits -> dlogits" step is pluggable: ``TorchChunkStep`` here (any
device), a fused Triton kernel in ``triton_kernels`` (CUDA); the driver is shared.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .token_ce import CEOptions, upcast

# Bytes of per-chunk [rows x V] scratch (logits buffer and its fp32 work copies). 64 MiB
# keeps the loss far below the reference's footprint and chunks large enough for
# efficient matmuls (at V=49152 ~340 rows in fp32, ~230 in bf16; ~40 at V=262144 bf16).
DEFAULT_MEMORY_BUDGET = 64 * 2**20


class TorchChunkStep:
    """Overwrites a chunk of logits with the gradient of its summed per-token loss, with
    in-place PyTorch ops on one fp32 work buffer (two with soft-capping):

        log_softmax in place -> loss from the target's log-prob -> exp_ in place = p
        -> p * (1 + 2 z lse) - (1 - eps) at the target - eps / V -> * (1 - tanh^2)

    Half-precision logits are copied into the fp32 buffer and the gradient copied back
    for the hidden-gradient matmul (in the input dtype, like the reference's backward);
    the weight and bias gradients are accumulated from the fp32 one (``grad32``).
    """

    # At least this many rows a chunk when the weight gradient is needed: every chunk
    # reads and writes the whole fp32 [V, H] accumulator, so few rows a chunk at a large
    # vocabulary make that traffic dominate (measured: docs/performance.md, "Defaults")
    MIN_ROWS = 256

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device, opts: CEOptions):
        self.opts = opts
        wdt = upcast(torch.empty((), dtype=dtype)).dtype
        self.work = None if wdt == dtype else torch.empty(rows, vocab, dtype=wdt, device=device)
        self.tanh = (torch.empty(rows, vocab, dtype=wdt, device=device)
                     if opts.logit_softcap else None)

    @staticmethod
    def bytes_per_row(vocab: int, dtype: torch.dtype, opts: CEOptions) -> int:
        item = torch.empty((), dtype=dtype).element_size()
        work = max(item, 4)
        return vocab * (item + (work if item < 4 else 0) + (work if opts.logit_softcap else 0))

    def grad32(self, c: int) -> torch.Tensor | None:
        """The fp32 gradient of the last chunk's first ``c`` rows (half-precision inputs
        only): weight and bias gradients are accumulated from it, not from its rounding."""
        return None if self.work is None else self.work[:c]

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        o = self.opts
        c, vocab = logits.shape
        x = logits if self.work is None else self.work[:c].copy_(logits)
        y = targets[:, None]
        if o.logit_softcap:
            t = torch.div(x, o.logit_softcap, out=self.tanh[:c]).tanh_()
            torch.mul(t, o.logit_softcap, out=x)
        s_y = x.gather(1, y).squeeze(1)
        torch.log_softmax(x, 1, out=x)                          # x = log p
        logp_y = x.gather(1, y).squeeze(1)
        loss = -logp_y
        if o.label_smoothing:                                   # lse - mean(s) = -mean(log p)
            loss = (1.0 - o.label_smoothing) * loss - o.label_smoothing * x.mean(1)
        if o.z_loss:
            lse = s_y - logp_y
            loss = loss + o.z_loss * lse.square()
        x.exp_()                                                # x = p
        if o.z_loss:
            x.mul_((1.0 + 2.0 * o.z_loss * lse)[:, None])
        x.scatter_add_(1, y, x.new_full((c, 1), o.label_smoothing - 1.0))
        if o.label_smoothing:
            x.sub_(o.label_smoothing / vocab)
        if o.logit_softcap:                                     # d s / d z = 1 - tanh^2
            x.addcmul_(x, t.square_(), value=-1.0)
        if x is not logits:
            logits.copy_(x)
        return loss


class WeightGradAccumulator:
    """grad_W [V, H] accumulated in fp32 over chunks: += dlogits^T @ h.

    Same dtype (fp32, fp64): ``addmm_`` in place, no temporary. Half precision:
    - when the chunk step kept its fp32 gradient (``dlogits32``, the pure-PyTorch step)
      and ``FP32_GEMM``: one fp32 ``addmm_`` of it with the chunk's rows upcast
      ([chunk x H], small): no rounding of dlogits and no extra pass over the
      accumulator;
    - else on CUDA cuBLAS writes fp32 straight from half inputs (``out_dtype``);
    - else the half-precision product goes through two small, reused block buffers
      (half, then fp32; mixed-dtype ``fp32.add_(bf16)`` is ~7x slower than a copy plus a
      same-dtype add on CPU, and a [V, H] half temporary would be as large as the weight).
    ``FP32_GEMM`` is on because it measured faster on CPU (docs/performance.md, "Defaults").
    """

    BLOCK_BYTES = 8 * 2**20  # both block buffers together: cache-sized
    FP32_GEMM = True

    def __init__(self, vocab: int, hdim: int, dtype: torch.dtype, device):
        acc_dtype = upcast(torch.empty((), dtype=dtype)).dtype
        self.acc = torch.zeros(vocab, hdim, dtype=acc_dtype, device=device)
        self.mixed = acc_dtype != dtype
        self.out_dtype = self.mixed and self.acc.is_cuda and _CUDA_OUT_DTYPE[0]
        self.half = self.full = None
        row_bytes = hdim * (torch.empty((), dtype=dtype).element_size() + self.acc.element_size())
        self.block = max(1, min(vocab, self.BLOCK_BYTES // row_bytes))

    def add(self, dlogits: torch.Tensor, h: torch.Tensor,
            dlogits32: torch.Tensor | None = None) -> None:
        if not self.mixed:
            self.acc.addmm_(dlogits.t(), h)
            return
        if dlogits32 is not None and self.FP32_GEMM:
            self.acc.addmm_(dlogits32.t(), h.to(self.acc.dtype))
            return
        if self.out_dtype:
            try:
                torch.addmm(self.acc, dlogits.t(), h, out_dtype=self.acc.dtype, out=self.acc)
                return
            except (RuntimeError, TypeError, NotImplementedError):
                self.out_dtype = _CUDA_OUT_DTYPE[0] = False
        if self.half is None:
            self.half = torch.empty(self.block, h.shape[1], dtype=h.dtype, device=h.device)
            self.full = torch.empty(self.block, h.shape[1], dtype=self.acc.dtype, device=h.device)
        for v0 in range(0, self.acc.shape[0], self.block):
            n = min(self.block, self.acc.shape[0] - v0)
            torch.mm(dlogits[:, v0:v0 + n].t(), h, out=self.half[:n])
            self.acc[v0:v0 + n].add_(self.full[:n].copy_(self.half[:n]))


_CUDA_OUT_DTYPE = [True]  # flipped off once if this torch/cuBLAS lacks addmm(out_dtype=)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_t CE(h_t W^T + b, y_t) / n over the rows ``rows`` of ``flat_h``, with all
    gradients computed in the forward (see module docstring)."""

    @staticmethod
    def forward(ctx, flat_h, weight, bias, rows, targets, n, opts, step_cls, chunk, need):
        # Function.forward already runs under no_grad: nothing below is recorded.
        need_h, need_w, need_b = need
        vocab, hdim = weight.shape
        dtype, dev = flat_h.dtype, flat_h.device
        acc_dtype = upcast(torch.empty((), dtype=dtype)).dtype
        grad_h = torch.zeros_like(flat_h) if need_h else None
        grad_w = WeightGradAccumulator(vocab, hdim, dtype, dev) if need_w else None
        grad_b = torch.zeros(vocab, dtype=acc_dtype, device=dev) if need_b else None

        buf = torch.empty(min(chunk, rows.numel()), vocab, dtype=dtype, device=dev)
        step = step_cls(buf.shape[0], vocab, dtype, dev, opts)
        loss = torch.zeros((), dtype=acc_dtype, device=dev)
        wt = weight.t()
        for start in range(0, rows.numel(), chunk):
            r = rows[start:start + chunk]
            h = flat_h.index_select(0, r)
            z = buf[:r.numel()]
            if bias is None:
                torch.mm(h, wt, out=z)
            else:
                torch.addmm(bias, h, wt, out=z)
            loss += step(z, targets[start:start + chunk]).sum()   # z is now dloss/dlogits
            z32 = step.grad32(z.shape[0])                         # fp32 copy, or None
            if need_h:
                grad_h.index_copy_(0, r, z @ weight)
            if need_w:
                grad_w.add(z, h, z32)
            if need_b:
                grad_b += (z if z32 is None else z32).sum(0, dtype=acc_dtype)
        del buf, step
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.acc, grad_b)
        ctx.n, ctx.dtypes, ctx.used = n, (flat_h.dtype, weight.dtype,
                                          None if bias is None else bias.dtype), False
        return loss / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError("the chunked LM loss scales its stored gradients in place: "
                               "backward through it can run only once (no retain_graph)")
        ctx.used = True
        scale = grad_out / ctx.n        # fp32 (fp64 for fp64 inputs)
        grads = []
        for g, dt in zip(ctx.saved_tensors, ctx.dtypes):
            if g is not None:           # in place, then cast: torch.mul(out=<other dtype>)
                g = cast_in_place(g.mul_(scale), dt)  # would allocate a full-size fp32 temporary
            grads.append(g)
        gh, gw, gb = grads
        return gh, gw, gb, None, None, None, None, None, None, None


def cast_in_place(src: torch.Tensor, dtype: torch.dtype, block_bytes: int = 8 * 2**20) -> torch.Tensor:
    """``src`` rounded to a narrower ``dtype`` inside ``src``'s own storage, block by block:
    a half-precision weight gradient then never coexists with its fp32 accumulator (at
    V x H = 49152 x 2048 that second buffer alone is 0.2 GB, a third of the loss's peak).
    Block [a, b) is read into a small temporary before it is written to bytes
    [a*n, b*n) (n = the narrow size), which are at or below its own source bytes and so
    hold nothing unread. The result views the whole (wider) storage, freed with it."""
    out_size = torch.empty((), dtype=dtype).element_size()
    if src.dtype == dtype or not src.dtype.is_floating_point or not src.is_contiguous() or src.dim() == 0 \
            or out_size >= src.element_size():
        return src.to(dtype)
    flat = src.view(-1)
    offset, rem = divmod(src.storage_offset() * src.element_size(), out_size)
    if rem:
        return src.to(dtype)
    dst = torch.empty(0, dtype=dtype, device=src.device).set_(src.untyped_storage(), offset, (flat.numel(),))
    step = max(1, block_bytes // src.element_size())
    for a in range(0, flat.numel(), step):
        dst[a:a + step].copy_(flat[a:a + step].to(dtype))
    return dst.view(src.shape)


def chunk_rows(n_rows: int, vocab: int, dtype: torch.dtype, opts: CEOptions, step_cls,
               memory_budget: int, chunk_size: int | None = None, min_rows: int = 1) -> int:
    """Rows per chunk: ``chunk_size`` when given, else as many as the budget holds but at
    least ``min_rows``, balanced so the last chunk is not a sliver."""
    if chunk_size:
        return max(1, int(chunk_size))
    rows = max(1, min_rows, memory_budget // step_cls.bytes_per_row(vocab, dtype, opts))
    n_chunks = max(1, math.ceil(n_rows / rows))
    return max(1, math.ceil(n_rows / n_chunks))


def fused_lm_term(name: str, step_cls, default_budget: int, doc: str):
    """A fused LM term (``reference_lm_term``'s arguments and result plus the chunking
    knobs), computed by ``FusedLinearCrossEntropy`` with the per-chunk step ``step_cls``.
    ``chunk_size`` (rows) overrides the chunking that ``memory_budget`` (bytes of
    per-chunk scratch) would pick."""

    def lm_term(flat_h, weight, bias, rows, targets, n, opts: CEOptions, *, chunk_size: int | None = None,
                memory_budget: int = default_budget):
        grad_on = torch.is_grad_enabled()
        need = tuple(bool(grad_on and t is not None and t.requires_grad) for t in (flat_h, weight, bias))
        chunk = chunk_rows(rows.numel(), weight.shape[0], flat_h.dtype, opts, step_cls,
                           memory_budget, chunk_size, step_cls.MIN_ROWS if need[1] else 1)
        return FusedLinearCrossEntropy.apply(flat_h, weight, bias, rows, targets, n, opts, step_cls, chunk, need)

    lm_term.__name__ = lm_term.__qualname__ = name
    lm_term.__doc__ = doc
    return lm_term


chunked_lm_term = fused_lm_term(
    "chunked_lm_term", TorchChunkStep, DEFAULT_MEMORY_BUDGET,
    "``reference_lm_term`` without ever materialising [N x V] logits (pure PyTorch, any device).")
