"""Best-fit-decreasing packing of tokenised sequences into fixed token budgets, and the
collator that turns packed rows into the PackedBatch of the batch contract:

    input_ids [B, T], position_ids [B, T] restarting at 0 per segment, lm_targets [B, T]
    (next-token ids, -100 where not supervised), cls_index [S] / cls_start [S] (flat
    indices into B*T of each segment's pooled token / first input token), cls_labels [S].

No attention mask: restarting position ids isolate the segments in transformers' sdpa
and eager attention (and flash-attention varlen on CUDA).

A multiple-choice item (``--formulation choice``: one question) is several segments
packed as one unit: its options ``[question, option]``, each pooled at its last token,
then its LM sequence. Its label indexes its options; ``choice_index [Q, K]`` maps each
question to the segments (rows of cls_index) of its options, -1 past its last option.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field, fields

import torch

IGNORE = -100


def best_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to <= capacity: items longest first, each into
    the fullest bin it fits (O(n log n) with a sorted list of free space)."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} sequence(s) longer than the packing budget {capacity} "
                         f"(first: item {too_long[0]}, {lengths[too_long[0]]} tokens)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin id), sorted
    for i in order:
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            room, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
    return bins


def plan_micro_batches(lengths, pack_tokens: int, rows_per_batch: int = 1, *, seed: int = 0,
                       epoch: int = 0, window: int | None = None) -> list[list[list[int]]]:
    """The epoch's micro-batches: examples shuffled (seed, epoch), packed window by window
    (``window`` examples at a time; None = all at once, the tightest packing), rows
    shuffled and grouped ``rows_per_batch`` at a time. Deterministic for (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = window or len(idx) or 1
    rows: list[list[int]] = []
    for start in range(0, len(idx), window):
        chunk = idx[start:start + window]
        rows += [[chunk[j] for j in b] for b in best_fit_decreasing([lengths[i] for i in chunk], pack_tokens)]
    rng.shuffle(rows)
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def plan_exact_steps(lengths, batch_size: int, pack_tokens: int, rows_per_batch: int = 1, *, seed: int = 0,
                     epoch: int = 0) -> list[list[list[list[int]]]]:
    """The epoch's optimizer steps, each exactly ``batch_size`` examples drawn at random (the
    last step holds the rest), as a plain loop or HF Trainer would take them; each step's
    examples are packed best-fit-decreasing into rows of ``pack_tokens`` and the rows grouped
    ``rows_per_batch`` to a micro-batch. Returns steps -> micro-batches -> rows -> example
    indices. Packing within a step (not across the epoch) keeps steps i.i.d.: a global pack
    groups examples of nearly equal length into the same step."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    steps = []
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        rows = [[chunk[j] for j in b] for b in best_fit_decreasing([lengths[i] for i in chunk], pack_tokens)]
        rng.shuffle(rows)
        steps.append([rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)])
    return steps


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    lm_targets: torch.Tensor
    cls_index: torch.Tensor
    cls_start: torch.Tensor
    cls_labels: torch.Tensor
    n_real_tokens: int
    n_lm_tokens: int
    example_ids: list[str] = field(default_factory=list)
    choice_index: torch.Tensor | None = None  # [Q, K]: multiple-choice items only

    def to(self, device) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if torch.is_tensor(v):
                moved[k] = v.to(device, non_blocking=True)
        return PackedBatch(**moved)

    @property
    def n_segments(self) -> int:
        return int(self.cls_index.numel())

    @property
    def budget(self) -> int:
        return int(self.input_ids.numel())


def collate_packed(rows: list[list[dict]], pad_id: int, *, pad_to: int | None = None,
                   pad_to_multiple_of: int = 8) -> PackedBatch:
    """rows: per packed row, its items as dicts with ``input_ids``, ``lm_mask``,
    ``cls_pos``, ``label`` (and optionally ``id``; a multiple-choice item also
    ``seg_lens``, and ``cls_pos`` a list, one pooled position per option). The padding
    tail of a row is a segment of its own (positions restart at 0), never supervised."""
    lens = [sum(len(s["input_ids"]) for s in row) for row in rows]
    T = pad_to or max(lens)
    if pad_to is None and pad_to_multiple_of > 1:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    if max(lens) > T:
        raise ValueError(f"packed row of {max(lens)} tokens exceeds pad_to={T}")
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    lm_targets = torch.full((B, T), IGNORE, dtype=torch.long)
    cls_index, cls_start, cls_labels, ids, choices = [], [], [], [], []
    n_lm = 0
    for b, row in enumerate(rows):
        off = 0
        for seg in row:
            seq = seg["input_ids"]
            n = len(seq)
            t = torch.as_tensor(seq, dtype=torch.long)
            input_ids[b, off:off + n] = t
            starts = _segment_starts(seg)
            for start, end in zip(starts, starts[1:] + [n]):
                position_ids[b, off + start:off + end] = torch.arange(end - start)
            mask = torch.as_tensor(seg["lm_mask"], dtype=torch.bool)
            # token i predicts token i+1 when token i+1 is supervised (a segment's first
            # token never is, so no target crosses a segment boundary)
            tgt = torch.where(mask[1:], t[1:], torch.full_like(t[1:], IGNORE))
            lm_targets[b, off:off + n - 1] = tgt
            n_lm += int(mask[1:].sum())
            pooled = seg["cls_pos"]
            if isinstance(pooled, (list, tuple)):  # a question: one pooled segment per option
                choices.append(list(range(len(cls_index), len(cls_index) + len(pooled))))
                cls_index += [b * T + off + p for p in pooled]
                cls_start += [b * T + off + s for s in starts[:len(pooled)]]
            else:
                cls_index.append(b * T + off + pooled)
                cls_start.append(b * T + off)
            cls_labels.append(seg["label"])
            ids.append(seg.get("id", ""))
            off += n
        if off < T:
            position_ids[b, off:] = torch.arange(T - off)
    return PackedBatch(input_ids=input_ids, position_ids=position_ids, lm_targets=lm_targets,
                       cls_index=torch.tensor(cls_index, dtype=torch.long),
                       cls_start=torch.tensor(cls_start, dtype=torch.long),
                       cls_labels=torch.tensor(cls_labels, dtype=torch.long),
                       n_real_tokens=sum(lens), n_lm_tokens=n_lm, example_ids=ids,
                       choice_index=_choice_index(choices) if choices else None)


def _segment_starts(item: dict) -> list[int]:
    """Where each segment of an item starts (one segment unless it has ``seg_lens``)."""
    lens = item.get("seg_lens")
    if not lens:
        return [0]
    if sum(lens) != len(item["input_ids"]):
        raise ValueError(f"item {item.get('id', '')!r}: seg_lens sum to {sum(lens)}, "
                         f"not its {len(item['input_ids'])} tokens")
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    return starts


def _choice_index(choices: list[list[int]]) -> torch.Tensor:
    """[Q, K] segment indices of each question's options, -1 past its last one."""
    width = max(map(len, choices))
    return torch.tensor([c + [-1] * (width - len(c)) for c in choices], dtype=torch.long)


def packing_efficiency(lengths, bins, capacity: int) -> float:
    """Real tokens over the token budget of the bins used."""
    return sum(lengths) / (len(bins) * capacity) if bins else 0.0
