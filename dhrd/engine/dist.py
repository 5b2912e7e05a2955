"""Processes and devices: one code path under ``deepspeed``, ``torchrun`` and plain
``python`` (world size 1), and a clean end (the process group destroyed, DeepSpeed's
shared-memory buffers removed)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

import torch

from ..fileio import free_port


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    def all_reduce(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather_dict(self, part: dict) -> dict:
        """Every rank's ``{example index: prediction}`` merged, on every rank."""
        if self.world == 1:
            return part
        parts = [None] * self.world
        torch.distributed.all_gather_object(parts, part)
        return {k: v for p in parts for k, v in p.items()}


def init_distributed() -> Dist:
    """Works under ``deepspeed``, ``torchrun`` and plain ``python`` (world size 1: the
    rendezvous variables get defaults, so deepspeed.initialize runs the same way)."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    acc = get_accelerator()
    if acc.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(acc.device_name())
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def shutdown_distributed(synchronize: bool = False) -> int:
    """Destroy the process group before the interpreter exits: left to interpreter
    teardown, gloo's worker threads can abort the process ("terminate called without an
    active exception", exit code 250) after a run that finished fine. ``synchronize``
    (after a clean run only: a failed rank would never reach it) first waits for every
    rank, so no rank tears down connections another is still using. Returns the world
    size the group had (0: there was none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if synchronize and world > 1:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    unlink_deepspeed_shm(rank)
    return world


def deepspeed_shm_path(rank: int, environ=None) -> str:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for this rank when all
    ranks are on one machine (ops/csrc/cpu/comm/shm.cpp: never unlinked by DeepSpeed)."""
    env = os.environ if environ is None else environ
    return (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_"
            f"{env.get('MASTER_PORT', '')}_{rank}")


def unlink_deepspeed_shm(rank: int) -> None:
    """Remove this rank's DeepSpeed all-reduce buffer name. DeepSpeed leaves one file of
    ~68 MB per rank and run in /dev/shm (RAM), so a machine running many CPU jobs fills
    its memory until the OOM killer steps in (seen: 196 files, 13 GB). Every rank mapped
    every buffer during init, so removing the names at exit disturbs nobody still running."""
    with contextlib.suppress(OSError):
        os.remove(deepspeed_shm_path(rank))


def exit_process(code: int, world: int) -> None:
    """End a launched process after ``shutdown_distributed`` (``world``: what it returned).
    After a multi-process run the interpreter's own teardown is skipped (everything is
    written and flushed, the process group destroyed): there it would destroy DeepSpeed's
    leftover communication handles, whose gloo threads can abort a finished ZeRO-3 run
    with SIGABRT ("terminate called without an active exception", exit code 250; seen in
    CI after a 2-rank run's last step, once per few runs)."""
    if world > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
