"""Sharding a generation run (``--shard i/n``): ids go to shards by a stable hash, so
shards are disjoint and together complete whatever the file order, and each shard writes
its own file (``out.shard-i-of-n.jsonl``). Separate files need no locking, which is
unreliable on the network file systems clusters use; ``dhrd rationales merge``
(:mod:`.merge`) joins them."""

from __future__ import annotations

import hashlib
import os


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """"i/n" (0-based), "auto" (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS; none set:
    no sharding) or None."""
    if spec is None:
        return None
    if spec == "auto":
        env = os.environ
        for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if rank in env and size in env:
                return parse_shard(f"{env[rank]}/{env[size]}") if int(env[size]) > 1 else None
        return None
    try:
        i, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/n, e.g. 0/4; got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_of(example_id: str, n: int) -> int:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha1(example_id.encode("utf-8")).digest()[:8], "big") % n


def shard_path(path: str, shard: tuple[int, int] | None) -> str:
    if shard is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard-{shard[0]}-of-{shard[1]}{ext or '.jsonl'}"
