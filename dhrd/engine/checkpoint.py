"""Crash-safe checkpoints around DeepSpeed's own files.

DeepSpeed's ``save_checkpoint`` writes model/optimizer/scheduler shards into a tag
directory. We add, per tag: each rank's RNG states and a completion marker
(``dhrd_complete.json``) written by rank 0 only after every rank has finished, and we
write ``latest`` ourselves (DeepSpeed's is disabled) by atomic rename after the marker.
A kill at any moment therefore leaves ``latest`` on a complete checkpoint, and resume
also ignores any tag without the marker. Works with any object that has DeepSpeed's
``save_checkpoint``/``load_checkpoint``; knows nothing else of the engine.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from ..fileio import atomic_open, atomic_write

MARKER = "dhrd_complete.json"
LATEST = "latest"
TAG_RE = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(root: str, tag: str) -> bool:
    try:
        with open(os.path.join(root, tag, MARKER)) as f:
            return json.load(f).get("tag") == tag
    except (OSError, ValueError):
        return False


def complete_tags(root: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if TAG_RE.match(t) and is_complete(root, t)]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)))


def find_resumable(root: str) -> str | None:
    """The tag ``latest`` names if it is complete, else the newest complete tag."""
    try:
        with open(os.path.join(root, LATEST)) as f:
            tag = f.read().strip()
        if is_complete(root, tag):
            return tag
    except OSError:
        pass
    tags = complete_tags(root)
    return tags[-1] if tags else None


def save(engine, root: str, step: int, state: dict, *, rank: int, world: int, keep: int) -> str:
    """Collective: every rank calls it. ``state`` (JSON-able: step, data position,
    counters) goes into the marker and DeepSpeed's client state."""
    tag = tag_for(step)
    os.makedirs(root, exist_ok=True)
    engine.save_checkpoint(root, tag=tag, client_state={"dhrd": state}, save_latest=False)
    buf = os.path.join(root, tag, f"rng_rank{rank}.pt")
    with atomic_open(buf, "wb") as f:
        torch.save(rng_state(), f)
    _barrier()  # every rank's DeepSpeed shards and RNG file are on disk
    if rank == 0:
        atomic_write(os.path.join(root, tag, MARKER),
                      json.dumps({"tag": tag, "world_size": world, "zero_stage": engine.zero_optimization_stage(),
                                  **state}).encode())
        atomic_write(os.path.join(root, LATEST), tag.encode())
        prune(root, keep, current=tag)
    _barrier()
    return tag


def prune(root: str, keep: int, current: str) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop incomplete leftovers older
    than ``current`` (a save killed half-way)."""
    done = complete_tags(root)
    doomed = done[:-keep] if keep > 0 else []
    cur = int(TAG_RE.match(current).group(1))
    for t in os.listdir(root):
        m = TAG_RE.match(t)
        if m and t not in done and int(m.group(1)) < cur:
            doomed.append(t)
    for t in doomed:
        if t != current:
            shutil.rmtree(os.path.join(root, t), ignore_errors=True)


def load(engine, root: str, tag: str, *, rank: int) -> dict:
    """Restore model, optimizer and scheduler (DeepSpeed) and this rank's RNG; returns
    the saved ``state``. Raises if the tag is not a complete checkpoint."""
    if not is_complete(root, tag):
        raise RuntimeError(f"checkpoint {os.path.join(root, tag)} is incomplete (no {MARKER}); "
                           "it was interrupted while saving")
    path, client = engine.load_checkpoint(root, tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(root, tag)}")
    rng_file = os.path.join(root, tag, f"rng_rank{rank}.pt")
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    with open(os.path.join(root, tag, MARKER)) as f:
        marker = json.load(f)
    state = (client or {}).get("dhrd") or {k: v for k, v in marker.items()
                                            if k not in ("tag", "world_size", "zero_stage")}
    return state
