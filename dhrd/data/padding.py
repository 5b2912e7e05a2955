"""Padding a batch of token-id lists to one width: the one place it is written (CoT
evaluation and the local teacher pad left for ``generate``; scoring and the plain-loop
tools pad right)."""

from __future__ import annotations

from typing import Literal

import torch


def pad_ids(seqs: list[list[int]], pad_id: int, *, side: Literal["left", "right"] = "right",
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids (``pad_id`` where padded) and the 0/1 attention mask; T = the longest
    sequence, or ``width``. Left padding ends every sequence at the same column, which
    batched ``generate`` needs."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r}: expected 'left' or 'right'")
    width = max((len(s) for s in seqs), default=0) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask
