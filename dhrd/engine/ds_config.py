"""DeepSpeed JSON configs: read one (or the built-in default, ZeRO stage "auto") and fill its "auto"
values from our arguments, so the JSON files in ds_configs/ stay generic and DeepSpeed
keeps doing what it does (AdamW, the LR schedule, clipping, accumulation, bf16)."""

from __future__ import annotations

import copy
import json
import os

import torch

DEFAULT_CONFIG = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 1000000,
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8,
                                              "weight_decay": "auto"}},
    # "auto": the shape TrainArgs.lr_schedule names (cosine unless told otherwise)
    "scheduler": {"type": "auto", "params": {}},
    # "auto": 0 for one fp32 process (nothing to partition; ZeRO-1/2 would add a flat
    # fp32 copy of the weights and gradients and per-bucket copies), 1 for one bf16/fp16
    # process (fp32 master weights), else 2 (resolve_stage)
    "zero_optimization": {"stage": "auto"},
}


def load_ds_config(path: str | None) -> dict:
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def bf16_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _fill(d: dict, key: str, value) -> None:
    if d.get(key, "auto") == "auto":
        d[key] = value


# --lr_schedule name -> DeepSpeed scheduler and the parameters of that shape (linear warm-up
# from 0, decay to 0): "linear" is transformers' get_linear_schedule_with_warmup, the
# schedule of HF Trainer's default
LR_SCHEDULES = {
    "cosine": ("WarmupCosineLR", {"warmup_min_ratio": 0.0, "cos_min_ratio": 0.0, "warmup_type": "linear"}),
    "linear": ("WarmupDecayLR", {"warmup_min_lr": 0.0, "warmup_type": "linear"}),
    "constant": ("WarmupLR", {"warmup_min_lr": 0.0, "warmup_type": "linear"}),
}


def _fill_scheduler(cfg: dict, lr_schedule: str) -> None:
    """Resolve ``"scheduler": {"type": "auto"}`` (the built-in config) from ``lr_schedule``
    ("auto" = cosine). A config that names its scheduler keeps it; naming a different
    shape with ``--lr_schedule`` as well is refused rather than one of them ignored."""
    if lr_schedule != "auto" and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r}: expected auto or one of {', '.join(LR_SCHEDULES)}")
    sched = cfg.get("scheduler")
    if sched is None:
        if lr_schedule != "auto":
            raise ValueError(f"--lr_schedule {lr_schedule}, but the DeepSpeed config has no scheduler "
                             f"(a constant lr): add \"scheduler\": {{\"type\": \"auto\"}} or drop the flag")
        return
    name = "cosine" if lr_schedule == "auto" else lr_schedule
    kind, defaults = LR_SCHEDULES[name]
    if sched.get("type", "auto") == "auto":
        sched["type"] = kind
        sched["params"] = {**defaults, **sched.get("params", {})}
    elif lr_schedule != "auto" and sched["type"] != kind:
        raise ValueError(f"--lr_schedule {lr_schedule} ({kind}), but the DeepSpeed config names scheduler "
                         f"{sched['type']}: set its \"type\" to \"auto\" or drop the flag")


def _fill_autocast(cfg: dict, autocast: str) -> None:
    """``--autocast bf16``: DeepSpeed's ``torch_autocast`` section (fp32 weights, gradients
    and optimizer; bf16 matmuls), which excludes its bf16/fp16 modes (bf16 weights)."""
    if autocast == "none":
        return
    if autocast != "bf16":
        raise ValueError(f"autocast={autocast!r}: expected none or bf16")
    for mode in ("bf16", "fp16"):
        if cfg.get(mode, {}).get("enabled") is True:
            raise ValueError(f"--autocast bf16 keeps fp32 weights, but the DeepSpeed config enables {mode} "
                             f"(half-precision weights): use one or the other")
        if mode in cfg:
            cfg[mode]["enabled"] = False
    ac = cfg.setdefault("torch_autocast", {})
    if ac.get("enabled") is False or ac.get("dtype", "bfloat16") not in ("bfloat16", "bf16"):
        raise ValueError(f"--autocast bf16, but the DeepSpeed config's torch_autocast section is {ac}")
    ac.update(enabled=True, dtype="bfloat16")


def check_train_settings(cfg: dict, lr_schedule: str, autocast: str, compile: bool = False) -> None:
    """The --lr_schedule / --autocast / --compile checks of fill_ds_config, before the model
    is loaded."""
    cfg = copy.deepcopy(cfg)
    _fill_scheduler(cfg, lr_schedule)
    _fill_autocast(cfg, autocast)
    if compile and cfg.get("zero_optimization", {}).get("stage") == 3:
        raise ValueError("--compile with ZeRO-3: its per-module parameter gather/release hooks would run inside "
                         "the compiled blocks; use ZeRO 0-2 (the built-in config's stage auto) or drop --compile")


def autocast_enabled(cfg: dict) -> bool:
    return cfg.get("torch_autocast", {}).get("enabled") is True


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it torch
    emulates bf16 matmuls, slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def fill_ds_config(cfg: dict, *, micro_rows: int, gas: int, world: int, lr: float, weight_decay: float,
                   warmup_steps: int, total_steps: int, max_grad_norm: float, device: torch.device,
                   hidden_size: int | None = None, lr_schedule: str = "auto", autocast: str = "none") -> dict:
    """A copy of ``cfg`` with every "auto" resolved. A micro-batch is ``micro_rows`` packed
    rows (DeepSpeed only uses the batch sizes for bookkeeping). bf16 is on where CUDA
    supports it and off on CPU; on CPU AdamW is torch's (no fused op to JIT-build)."""
    cfg = copy.deepcopy(cfg)
    _fill(cfg, "train_micro_batch_size_per_gpu", micro_rows)
    _fill(cfg, "gradient_accumulation_steps", gas)
    _fill(cfg, "train_batch_size", micro_rows * gas * world)
    _fill(cfg, "gradient_clipping", max_grad_norm)
    _fill_autocast(cfg, autocast)
    bf16 = cfg.setdefault("bf16", {})
    _fill(bf16, "enabled", bf16_available(device))
    if bf16["enabled"] and not bf16_available(device):
        raise ValueError("the DeepSpeed config enables bf16 but this device has no bf16 support")
    opt = cfg.setdefault("optimizer", {"type": "AdamW", "params": {}}).setdefault("params", {})
    _fill(opt, "lr", lr)
    _fill(opt, "weight_decay", weight_decay)
    if device.type != "cuda" and not cfg.get("zero_optimization", {}).get("offload_optimizer"):
        opt.setdefault("torch_adam", True)
        # torch's fused CPU AdamW: one pass over each tensor, not a loop over them
        # (docs/performance.md, "Defaults")
        opt.setdefault("fused", True)
    _fill_scheduler(cfg, lr_schedule)
    sched = cfg.get("scheduler", {}).get("params")
    if sched is not None:
        warmup = max(1, min(warmup_steps, total_steps))
        _fill(sched, "warmup_num_steps", warmup)
        # the engine starts a warmup schedule at iteration 1 (start_warmup_schedule), so
        # update k runs at iteration k; two more than our steps keeps the last one above
        # the cosine/decay floor
        if cfg["scheduler"].get("type") != "WarmupLR":  # constant after warm-up: no length
            _fill(sched, "total_num_steps", max(total_steps + 2, warmup + 1))
        if cfg["scheduler"].get("type") in ("WarmupLR", "WarmupDecayLR"):
            _fill(sched, "warmup_max_lr", lr)
    zero = cfg.setdefault("zero_optimization", {"stage": 0})
    if zero.get("stage", 0) == "auto":
        zero["stage"] = resolve_stage(world, half=_half_precision(cfg))
    # HF's rule of thumb from the hidden size; DeepSpeed's own defaults without it
    h2 = hidden_size * hidden_size if hidden_size else None
    _fill(zero, "reduce_bucket_size", h2 or 500_000_000)
    _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * h2) if h2 else 50_000_000)
    _fill(zero, "stage3_param_persistence_threshold", 10 * hidden_size if hidden_size else 100_000)
    _check_skips_nonfinite(cfg)
    leftover = [k for k, v in _walk(cfg) if v == "auto"]
    if leftover:
        raise ValueError(f"DeepSpeed config keeps 'auto' values we cannot fill: {', '.join(leftover)}")
    return cfg


def _half_precision(cfg: dict) -> bool:
    return cfg.get("bf16", {}).get("enabled") is True or cfg.get("fp16", {}).get("enabled") is True


def resolve_stage(world: int, *, half: bool) -> int:
    """The ZeRO stage of ``"stage": "auto"``: 0 for a single fp32 process, where there is
    nothing to partition and ZeRO-1/2 only add a flat fp32 copy of the weights and
    gradients plus a copy of every gradient through the reduce buckets; 1 for a single
    bf16/fp16 process (stage 0 in half precision would update the half-precision weights
    with no fp32 master copy; stage 1 keeps it and, unlike stage 2, reduces gradients once
    a step instead of once a micro-batch); 2 for several processes. Measured:
    docs/performance.md, "Defaults"."""
    if world == 1:
        return 1 if half else 0
    return 2


def _check_skips_nonfinite(cfg: dict) -> None:
    """The engine skips a NaN/inf-loss step by handing DeepSpeed NaN gradients, which its
    overflow check (ZeRO-1/2/3, bf16 and fp16 optimizers) turns into a skipped update; at
    stage 0 in fp32, where DeepSpeed calls the plain optimizer, ``step.StepSkipper`` does
    it. Reject the set-ups where the check was switched off and NaNs would be applied."""
    zero, bf16 = cfg.get("zero_optimization", {}), cfg.get("bf16", {})
    stage, half = zero_stage(cfg), _half_precision(cfg)
    why = None
    if stage in (1, 2) and bf16.get("enabled") is True and bf16.get("check_grad_overflow") is False:
        why = "bf16.check_grad_overflow is false"
    elif stage in (1, 2) and not half and zero.get("compute_grad_norm") is False:
        why = "zero_optimization.compute_grad_norm is false"
    if why:
        raise ValueError(f"DeepSpeed config: {why}; steps with a NaN/inf loss could not be skipped")


WARMUP_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")


def start_warmup_schedule(cfg: dict, scheduler) -> None:
    """DeepSpeed's warmup schedulers give ratio 0 at iterations -1 (before any step) and
    0, so the first two updates of a fresh run would use lr 0. Start at iteration 1:
    update k then uses warmup ratio k / warmup_num_steps. Resumed runs keep the
    checkpoint's iteration (only a scheduler that has not stepped is moved)."""
    if cfg.get("scheduler", {}).get("type") in WARMUP_SCHEDULERS and \
            getattr(scheduler, "last_batch_iteration", None) == -1:
        scheduler.step(1)


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def sanitize_cuda_arch_list(environ=None) -> str | None:
    """DeepSpeed's op builder (used to JIT-build FusedAdam, its default AdamW on CUDA)
    parses ``TORCH_CUDA_ARCH_LIST`` entries as dotted integers, so an arch-specific
    entry such as Hopper's ``9.0a`` (set by CUDA 13 images) kills ``deepspeed.initialize``
    with ``invalid literal for int() with base 10: '0a'``: the failure a first ZeRO-3 try
    on an H200 hit. Rewrites such entries to the plain ones (``9.0``; ``+PTX`` kept) for
    this process and returns the old value when it changed anything."""
    import re

    env = os.environ if environ is None else environ
    old = env.get("TORCH_CUDA_ARCH_LIST")
    if not old:
        return None
    new = re.sub(r"(\d+\.\d+)[a-zA-Z]+", r"\1", old)
    if new == old:
        return None
    env["TORCH_CUDA_ARCH_LIST"] = new
    return old
