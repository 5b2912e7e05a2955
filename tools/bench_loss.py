"""Peak memory and time of the LM loss, forward + backward: reference vs chunked (and,
on CUDA, the Triton kernel and Liger-Kernel's fused linear cross-entropy when importable).

    python tools/bench_loss.py --device cpu --dtype bf16 --sizes 4096x576x49152 --repeat 2

Every (configuration, implementation) runs in a fresh subprocess, so one measurement
cannot inherit another's allocator state. What "peak memory" means:

- cpu: the process's resident-set high-water mark (VmHWM) during one forward+backward,
  minus the resident set just before it (inputs already allocated and touched; the peak
  is reset through /proc/self/clear_refs). It includes everything the step allocates,
  the returned gradients (hidden.grad, weight.grad) too, and is rounded to pages;
  torch's CPU allocator has no counters of its own.
- cuda: torch.cuda.max_memory_allocated() minus memory_allocated() before the step.

Time: median wall-clock of ``--repeat`` forward+backward runs after the measured one
(which also serves as warm-up); on cpu also the median process CPU time (user + system,
all threads), which a machine shared with other jobs disturbs much less than wall time. All N tokens are
supervised; the classification term
is the same tiny [64 x 2] term for every implementation (Liger: LM term only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = [f"{n}x{h}x{v}" for n in (4096, 16384) for h in (576, 2048)
                 for v in (49152, 262144)]
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def parse_size(s: str) -> tuple[int, int, int]:
    n, h, v = (int(x) for x in s.lower().split("x"))
    return n, h, v


def reference_bytes(n: int, h: int, v: int, itemsize: int) -> int:
    """What the unfused reference needs beyond its inputs, roughly: the logits in the input
    dtype and in fp32, fp32 temporaries of the softmax and its gradient, the gradient's
    input-dtype cast, plus weight.grad (measured on CPU: 18.8 bytes a logit in bf16)."""
    return n * v * (2 * itemsize + 16 if itemsize < 4 else 5 * itemsize) + v * h * itemsize


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------
# worker: one configuration, one implementation, one process

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def worker(args) -> dict:
    import torch

    from dhrd.loss import dual_head_loss

    n, h, v = parse_size(args.size)
    dtype = getattr(torch, DTYPES[args.dtype])
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(n, h, device=dev, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, device=dev, generator=g) * h ** -0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), device=dev, generator=g)
    cls_logits = torch.randn(64, 2, device=dev, generator=g).to(dtype).requires_grad_()
    cls_labels = torch.randint(0, 2, (64,), device=dev, generator=g)

    if args.impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()

        def step():
            liger(weight, hidden, targets).backward()
    else:
        kw = {"memory_budget": args.memory_budget} if args.memory_budget and args.impl != "reference" else {}

        def step():
            dual_head_loss(hidden, weight, targets, cls_logits, cls_labels,
                           impl=args.impl, **kw).total.backward()

    def clear():
        for t in (hidden, weight, cls_logits):
            t.grad = None

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        step()
        peak = (_status_kb("VmHWM") - base) * 1024
    times, cpu = [], []
    for _ in range(args.repeat):
        clear()
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"peak_bytes": peak, "time_s": statistics.median(times) if times else None,
            "cpu_s": statistics.median(cpu) if cpu else None, "times": times}


# ---------------------------------------------------------------------------------------
# driver

def run_one(args, size: str, impl: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--size", size, "--impl", impl,
           "--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat),
           "--memory_budget", str(args.memory_budget or 0), "--threads", str(args.threads or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode}"
                         + (" (out of memory?)" if proc.returncode == -9 else "")}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


CUDA_IMPLS = ("triton", "liger")


def available_impls(device: str) -> list[str]:
    impls = ["reference", "chunked"]
    if device == "cuda":
        from dhrd.loss import IMPLEMENTATIONS

        if "triton" in IMPLEMENTATIONS:
            impls.append("triton")
        try:
            import liger_kernel.transformers  # noqa: F401
            impls.append("liger")
        except ImportError:
            pass
    return impls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES,
                    help="NxHxV triples (tokens x hidden x vocab); default: the full grid")
    ap.add_argument("--impls", nargs="*", default=None, help="subset of the implementations")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after the measured one")
    ap.add_argument("--memory_budget", type=int, default=0,
                    help="bytes of per-chunk scratch for the fused losses (0: their default)")
    ap.add_argument("--max_gb", type=float, default=None,
                    help="skip the reference where it would need more (default: 85%% of MemAvailable on cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the worker (0: default)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    impls = args.impls or available_impls(args.device)
    if args.max_gb is not None:
        limit = args.max_gb * 2**30
    elif args.device == "cpu":
        limit = 0.85 * mem_available()
    else:
        import torch

        limit = torch.cuda.get_device_properties(0).total_memory * 0.9
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[args.dtype]
    print(f"device={args.device} dtype={args.dtype} repeat={args.repeat} "
          "peak memory = " + ("RSS high-water mark minus RSS before the step" if args.device == "cpu"
                              else "max_memory_allocated minus allocated before") + "\n")
    cpu = args.device == "cpu"
    print("| N | H | V | impl | peak mem (GB) | mem / ref | wall (s) | wall / ref |"
          + (" CPU (s) | CPU / ref |" if cpu else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if cpu else ""))
    for size in args.sizes:
        n, h, v = parse_size(size)
        ref = None
        for impl in impls:
            need = reference_bytes(n, h, v, itemsize)
            if impl == "reference" and need > limit:
                res = {"error": f"skipped: would need ~{need / 2**30:.1f} GB"}
            else:
                res = run_one(args, size, impl)
            if impl == "reference" and "error" not in res:
                ref = res
            if "error" in res:
                print(f"| {n} | {h} | {v} | {impl} | {res['error']} | | | |" + (" | |" if cpu else ""),
                      flush=True)
                continue
            mr = f"{res['peak_bytes'] / ref['peak_bytes']:.3f}" if ref and ref["peak_bytes"] > 0 else "-"
            row = f"| {n} | {h} | {v} | {impl} | {res['peak_bytes'] / 2**30:.3f} | {mr} |"
            for key in ("time_s", "cpu_s") if cpu else ("time_s",):
                t = res.get(key)
                r = f"{t / ref[key]:.2f}" if ref and t and ref.get(key) else "-"
                row += f" {t:.3f} | {r} |" if t else " - | - |"
            print(row, flush=True)
        if cpu and not args.impls:
            import torch

            if not torch.cuda.is_available():
                for impl in CUDA_IMPLS:
                    print(f"| {n} | {h} | {v} | {impl} (cuda) | n/a (no GPU) | | | |"
                          + (" | |" if cpu else ""), flush=True)


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_loss.py", main))
