"""The data order: packed micro-batches of epoch 0, 1, 2, ... as one deterministic
stream, the steps it is cut into (``exact``: every step ``global_batch_size`` examples;
``packed``: M full micro-batches a step), and collation into a ``PackedBatch``.

An optimizer step is a fixed number of GLOBAL micro-batches M (all ranks); each rank runs
gas = M / world of them. Step k uses stream positions [kM, (k+1)M) on any world size: the
same step on 1 or N processes, and resuming needs only k.

An example with k rationales has k tokenised rows (``slots``: the example each row belongs
to); epoch e trains example j on its row (e + j) mod k, so every epoch sees each example
once, with a different rationale each epoch, at the compute of one."""

from __future__ import annotations

import math

from .packing import collate_packed, plan_exact_steps, plan_micro_batches

ROW_COLUMNS = ("input_ids", "lm_mask", "cls_pos", "label", "id")
CHOICE_COLUMNS = ("seg_lens",)  # a multiple-choice table's (dhrd.data.choice)


class MicroBatchStream:
    """Packed micro-batches of epoch 0, 1, 2, ... as one indexable stream; position p is
    deterministic for (seed, lengths), whatever the world size. Step k is positions
    [k M, (k+1) M).

    ``packed`` (``batch_size`` None): the epoch packed as tightly as it goes; a step is M
    full micro-batches, so it holds about M x (examples per row) examples.
    ``exact``: every step is exactly ``batch_size`` examples (plan_exact_steps), padded
    with empty micro-batches ([]) to the M of the fullest step, so DeepSpeed's fixed
    accumulation count holds."""

    def __init__(self, lengths, pack_tokens: int, rows_per_batch: int, seed: int, batch_size: int | None = None,
                 per_step: int | None = None, slots=None):
        self.row_lengths, self.pack_tokens, self.rows, self.seed = list(lengths), pack_tokens, rows_per_batch, seed
        self.batch_size, self.per_step = batch_size, per_step
        self.variants = example_rows(slots, len(self.row_lengths))
        self.n_examples = len(self.variants)
        self._plans: list[list] = []
        self._steps: dict[int, list] = {}  # exact mode: planned once, sized (M) and flattened (plan)

    def epoch_rows(self, epoch: int) -> list[int]:
        """The row each example trains on in ``epoch``."""
        return [v[(epoch + j) % len(v)] for j, v in enumerate(self.variants)]

    def _planned(self, planner, epoch: int, **kw) -> list:
        """``planner`` over this epoch's rows, its positions mapped back to row indices."""
        rows = self.epoch_rows(epoch)
        plan = planner([self.row_lengths[r] for r in rows], pack_tokens=self.pack_tokens,
                       rows_per_batch=self.rows, seed=self.seed, epoch=epoch, **kw)
        if all(r == j for j, r in enumerate(rows)):
            return plan
        return _remap(plan, rows)

    def exact_steps(self, epoch: int) -> list:
        if epoch not in self._steps:
            self._steps[epoch] = self._planned(plan_exact_steps, epoch, batch_size=self.batch_size)
        return self._steps[epoch]

    def micro_batches_needed(self, epochs: int, world: int) -> int:
        """Exact mode: the M that holds the fullest step of the first ``epochs`` epochs, a
        multiple of the world size."""
        m = max(len(step) for e in range(max(1, epochs)) for step in self.exact_steps(e))
        return world * math.ceil(m / world)

    def plan(self, epoch: int) -> list:
        while len(self._plans) <= epoch:
            e = len(self._plans)
            if self.batch_size is None:
                self._plans.append(self._planned(plan_micro_batches, e))
                continue
            flat = []
            for step in self.exact_steps(e):
                if len(step) > self.per_step:
                    raise RuntimeError(f"epoch {e}: a step needs {len(step)} micro-batches, more than the "
                                       f"{self.per_step} planned")
                flat += step + [[] for _ in range(self.per_step - len(step))]
            self._plans.append(flat)
        return self._plans[epoch]

    def locate(self, pos: int) -> tuple[int, int]:
        """(epoch, index in the epoch's plan) of stream position ``pos``."""
        epoch = 0
        while pos >= len(self.plan(epoch)):
            pos -= len(self.plan(epoch))
            epoch += 1
        return epoch, pos

    def __getitem__(self, pos: int) -> list[list[int]]:
        epoch, i = self.locate(pos)
        return self.plan(epoch)[i]


def example_rows(slots, n_rows: int) -> list[list[int]]:
    """Per example, its rows in order (row j is example j's first; further rows follow all
    first rows). None: one row an example."""
    if slots is None:
        return [[j] for j in range(n_rows)]
    out: list[list[int]] = []
    for row, slot in enumerate(slots):
        if slot == len(out):
            out.append([row])
        elif slot < len(out):
            out[slot].append(row)
        else:
            raise ValueError(f"row {row} belongs to example {slot} before example {len(out)} has a row")
    return out


def _remap(plan, rows: list[int]):
    """Positions (nested lists of ints) -> rows[position]."""
    return [_remap(p, rows) if isinstance(p, list) else rows[p] for p in plan]


def micro_batches_per_step(train_args, n_examples: int, plan_len: int, world: int) -> int:
    """Packed batching: global micro-batches per optimizer step, given, or the count that
    holds about ``global_batch_size`` examples; a multiple of the world size."""
    m = train_args.micro_batches_per_step
    if m:
        if m % world:
            raise ValueError(f"micro_batches_per_step={m} is not a multiple of the world size {world}")
        return m
    per_micro = n_examples / max(plan_len, 1)
    m = max(1, round(train_args.global_batch_size / per_micro))
    return world * math.ceil(m / world)


def data_order(train_args, data_args, lengths, world: int, slots=None) -> tuple[MicroBatchStream, int, int, str]:
    """The stream, its micro-batches per step M, the steps of the run, and why: ``exact``
    batching (every step ``global_batch_size`` examples) unless --micro_batches_per_step or
    --batching packed asks for M full packs a step. ``slots``: the example of each row
    (several rows an example: k rationales)."""
    mode = train_args.batching
    if mode == "auto":
        mode = "packed" if train_args.micro_batches_per_step else "exact"
    if mode == "exact":
        if train_args.micro_batches_per_step:
            raise ValueError("--batching exact sizes steps by --global_batch_size; drop --micro_batches_per_step")
        stream = MicroBatchStream(lengths, data_args.pack_tokens, data_args.rows_per_batch, train_args.seed,
                                  batch_size=train_args.global_batch_size, slots=slots)
        steps_per_epoch = math.ceil(stream.n_examples / train_args.global_batch_size)
        total = train_args.max_steps if train_args.max_steps > 0 else \
            max(1, math.ceil(train_args.epochs * steps_per_epoch))
        stream.per_step = stream.micro_batches_needed(math.ceil(total / steps_per_epoch), world)
        why = f"exact: {train_args.global_batch_size} examples a step, in up to {stream.per_step} micro-batches"
        return stream, stream.per_step, total, why
    stream = MicroBatchStream(lengths, data_args.pack_tokens, data_args.rows_per_batch, train_args.seed, slots=slots)
    M = micro_batches_per_step(train_args, stream.n_examples, len(stream.plan(0)), world)
    total = train_args.max_steps if train_args.max_steps > 0 else \
        max(1, math.ceil(train_args.epochs * len(stream.plan(0)) / M))
    why = f"packed: {M} full micro-batches a step, ~{M * stream.n_examples / len(stream.plan(0)):.1f} examples"
    return stream, M, total, why


def collate(rows_idx, table: dict, pad_id: int):
    """A PackedBatch of these rows; no rows (an exact-batching step's padding) gives one row
    of 8 pad tokens with nothing to pool or supervise: its forward and backward keep the
    ranks' collectives in step and add zero to the gradient."""
    if not rows_idx:
        return collate_packed([[]], pad_id, pad_to=8)
    columns = ROW_COLUMNS + tuple(k for k in CHOICE_COLUMNS if k in table)
    rows = [[{k: table[k][i] for k in columns} for i in row] for row in rows_idx]
    return collate_packed(rows, pad_id)


def model_inputs(b, device) -> dict:
    """What the model reads of a batch (evaluation: no targets, so no loss)."""
    b = b.to(device)
    return dict(input_ids=b.input_ids, position_ids=b.position_ids, cls_index=b.cls_index,
                cls_start=b.cls_start, choice_index=b.choice_index)


def batch_inputs(b, device) -> dict:
    """The model's inputs and both heads' targets (training)."""
    b = b.to(device)
    return dict(model_inputs(b, device), lm_targets=b.lm_targets, cls_labels=b.cls_labels)
