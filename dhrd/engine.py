"""DeepSpeed engine set-up and the train loop.

One code path for 1..N processes, CPU or CUDA, ZeRO 0-3. What DeepSpeed does (AdamW,
the LR schedule, clipping, accumulation, bf16, checkpoint shards) is left to it; this
module adds what packing and the dual-head loss need:

* An optimizer step is a fixed number of GLOBAL micro-batches M (all ranks); each rank
  runs gas = M / world of them. Micro-batches come from one deterministic stream of
  packed plans (epoch after epoch), so step k uses stream positions [kM, (k+1)M) on any
  world size: the same step on 1 or N processes, and resuming needs only k.
* Before the step's forward passes the ranks all-reduce the supervised-token and
  labelled-example counts of all the step's micro-batches; each micro-batch's loss is
  its SUM divided by those global counts, so the step's true loss is the sum over ranks
  and micro-batches. DeepSpeed averages gradients over ranks (x 1/world) and, with
  ``scale_wrt_gas``, divides the loss by gas; we call ``backward(loss * world,
  scale_wrt_gas=False)`` so the reduced gradient is exactly the sum-normalised one.
* The loss runs inside the module DeepSpeed wraps (``DualHeadLoss``), and the LM-head
  weight is registered as an external parameter of it: under ZeRO-3 it is gathered for
  the loss (tied embeddings included), and every rank runs the same modules in the same
  order even with nothing to supervise (the loss returns a graph-connected zero).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import checkpoint, locks, preemption
from .alpha_schedule import alpha_at
from .config import resolved_config
from .cot_eval import evaluate_cot, resolve_eval_mode
from .data.packing import collate_packed, plan_exact_steps, plan_micro_batches
from .data.sequences import SequenceBuilder, SequenceSpec
from .fileio import atomic_write_json, atomic_write_jsonl, free_port, repair_jsonl_tail
from .ds_config import fill_ds_config, load_ds_config, sanitize_cuda_arch_list, start_warmup_schedule, zero_stage
from .flops import StepFlops, peak_tflops
from .kernels import dual_head_loss
from .monitor import Monitor, log

ROW_COLUMNS = ("input_ids", "lm_mask", "cls_pos", "label", "id")


class TrainingDiverged(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# processes and devices

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


# ---------------------------------------------------------------------------------------
# model

def apply_lora(backbone, model_args):
    """peft LoRA adapters on the attention and MLP projections; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                     lora_dropout=model_args.lora_dropout, bias="none",
                     target_modules=[t.strip() for t in model_args.lora_targets.split(",") if t.strip()])
    return get_peft_model(backbone, cfg)


def build_model(model_args, num_labels: int, ds_cfg: dict):
    """Backbone + tokenizer + reasoning tokens + (LoRA) + head. Under ZeRO-3 the backbone
    is loaded under ``HfDeepSpeedConfig`` (which must stay alive: it is returned) and
    the head is built under ``zero.Init``, so no rank ever holds the full model."""
    from .backbones import load_backbone, load_tokenizer, resolve_dtype, resolve_model_path
    from .model import DualHeadModel, add_reasoning_tokens

    hf_ds = None
    init_ctx = contextlib.nullcontext()
    if zero_stage(ds_cfg) == 3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_cfg)
        init_ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg)
    path = resolve_model_path(model_args.model)
    if not os.path.exists(path) and (os.path.sep in path or path.startswith(".")):
        raise FileNotFoundError(f"model directory not found: {path}")
    tokenizer = load_tokenizer(path, model_args.gguf_file)
    dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else resolve_dtype(model_args.dtype, "cpu")
    backbone = load_backbone(path, dtype=dtype, attn_implementation=model_args.attn_implementation,
                             gguf_file=model_args.gguf_file)
    special = add_reasoning_tokens(tokenizer, backbone)
    if model_args.lora:
        backbone = apply_lora(backbone, model_args)
    with init_ctx:
        model = DualHeadModel(backbone, num_labels, pooling=model_args.pooling,
                              head_inner_size=model_args.head_inner_size, head_dropout=model_args.head_dropout,
                              head=model_args.head)
    return model, tokenizer, special, hf_ds


class DualHeadLoss(nn.Module):
    """The module DeepSpeed wraps: DualHeadModel forward + the dual-head loss, so ZeRO-3's
    hooks gather every weight the loss touches. Returns (total, cls, lm) or, with
    ``eval_only``, the class logits."""

    def __init__(self, model, loss_args):
        super().__init__()
        self.model = model
        self.loss_args = loss_args
        self.alpha = loss_args.alpha  # this step's alpha (the trainer moves it by --alpha_schedule)
        for p in (model.lm_weight, model.lm_bias):
            if p is not None and hasattr(p, "ds_id"):
                import deepspeed

                deepspeed.zero.register_external_parameter(self, p)

    def forward(self, input_ids, position_ids, cls_index, cls_start, lm_targets=None, cls_labels=None,
                n_lm_tokens=None, n_cls=None, eval_only: bool = False):
        out = self.model(input_ids, position_ids, cls_index, cls_start)
        if eval_only:
            return out.cls_logits
        a = self.loss_args
        loss = dual_head_loss(out.hidden, self.model.lm_weight, lm_targets, out.cls_logits, cls_labels,
                              alpha=self.alpha, beta=a.beta, n_lm_tokens=n_lm_tokens, n_cls=n_cls,
                              impl=a.loss_impl, logit_softcap=self.model.logit_softcap,
                              lm_bias=self.model.lm_bias, label_smoothing=a.label_smoothing, z_loss=a.z_loss)
        return loss.total, loss.cls, loss.lm


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; no weight decay on biases and norms (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)
            (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------------------------
# data order

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
                 per_step: int | None = None):
        self.lengths, self.pack_tokens, self.rows, self.seed = list(lengths), pack_tokens, rows_per_batch, seed
        self.batch_size, self.per_step = batch_size, per_step
        self._plans: list[list] = []
        self._steps: dict[int, list] = {}  # exact mode: planned once, sized (M) and flattened (plan)

    def exact_steps(self, epoch: int) -> list:
        if epoch not in self._steps:
            self._steps[epoch] = plan_exact_steps(self.lengths, self.batch_size, self.pack_tokens, self.rows,
                                                  seed=self.seed, epoch=epoch)
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
                self._plans.append(plan_micro_batches(self.lengths, self.pack_tokens, self.rows, seed=self.seed,
                                                      epoch=e))
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


def data_order(train_args, data_args, lengths, world: int) -> tuple[MicroBatchStream, int, int, str]:
    """The stream, its micro-batches per step M, the steps of the run, and why: ``exact``
    batching (every step ``global_batch_size`` examples) unless --micro_batches_per_step or
    --batching packed asks for M full packs a step."""
    mode = train_args.batching
    if mode == "auto":
        mode = "packed" if train_args.micro_batches_per_step else "exact"
    if mode == "exact":
        if train_args.micro_batches_per_step:
            raise ValueError("--batching exact sizes steps by --global_batch_size; drop --micro_batches_per_step")
        stream = MicroBatchStream(lengths, data_args.pack_tokens, data_args.rows_per_batch, train_args.seed,
                                  batch_size=train_args.global_batch_size)
        steps_per_epoch = math.ceil(len(lengths) / train_args.global_batch_size)
        total = train_args.max_steps if train_args.max_steps > 0 else \
            max(1, math.ceil(train_args.epochs * steps_per_epoch))
        stream.per_step = stream.micro_batches_needed(math.ceil(total / steps_per_epoch), world)
        why = f"exact: {train_args.global_batch_size} examples a step, in up to {stream.per_step} micro-batches"
        return stream, stream.per_step, total, why
    stream = MicroBatchStream(lengths, data_args.pack_tokens, data_args.rows_per_batch, train_args.seed)
    M = micro_batches_per_step(train_args, len(lengths), len(stream.plan(0)), world)
    total = train_args.max_steps if train_args.max_steps > 0 else \
        max(1, math.ceil(train_args.epochs * len(stream.plan(0)) / M))
    why = f"packed: {M} full micro-batches a step, ~{M * len(lengths) / len(stream.plan(0)):.1f} examples"
    return stream, M, total, why


def collate(rows_idx, table: dict, pad_id: int):
    """A PackedBatch of these rows; no rows (an exact-batching step's padding) gives one row
    of 8 pad tokens with nothing to pool or supervise: its forward and backward keep the
    ranks' collectives in step and add zero to the gradient."""
    if not rows_idx:
        return collate_packed([[]], pad_id, pad_to=8)
    rows = [[{k: table[k][i] for k in ROW_COLUMNS} for i in row] for row in rows_idx]
    return collate_packed(rows, pad_id)


def batch_inputs(b, device) -> dict:
    b = b.to(device)
    return dict(input_ids=b.input_ids, position_ids=b.position_ids, cls_index=b.cls_index,
                cls_start=b.cls_start, lm_targets=b.lm_targets, cls_labels=b.cls_labels)


# ---------------------------------------------------------------------------------------
# non-finite losses

class NonFiniteGuard:
    """Counts non-finite steps; raises after ``patience`` in a row."""

    def __init__(self, patience: int, total: int = 0, in_row: int = 0):
        self.patience, self.total, self.in_row = patience, total, in_row

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.in_row = 0
            return
        self.total += 1
        self.in_row += 1
        if self.in_row >= self.patience:
            raise TrainingDiverged(
                f"loss was NaN/inf in {self.in_row} consecutive steps (last: step {step}; "
                f"{self.total} in all): stopping. Lower --lr, check the data, or raise --nan_patience.")


def optimizer_step(engine, batches: list, dist: Dist, n_lm: float, n_cls: float) -> list[float] | None:
    """This rank's micro-batches of one optimizer step: forward, backward, engine.step()
    each (``n_lm``/``n_cls``: the step's global counts). Returns the step's global
    (total, cls, lm) loss, or None when a loss was NaN/inf on any rank: then the step is
    skipped for real. The ranks agree on that after each forward, and from then on every
    rank backpropagates a NaN loss, so the accumulated gradients are NaN everywhere and
    DeepSpeed's own overflow check (ZeRO-1/2/3 and bf16 optimizers: an invalid global
    grad norm) drops the update at the boundary: no optimizer or scheduler step, the
    gradients cleared, ``engine.skipped_steps`` + 1. Every rank still runs the same
    forwards, backwards and steps, so ZeRO-3's collectives stay in step."""
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)
    finite = True
    for b in batches:
        total, cls, lm = engine(**batch_inputs(b, dist.device), n_lm_tokens=max(n_lm, 1.0), n_cls=max(n_cls, 1.0))
        bad = dist.all_reduce(torch.tensor([0.0 if torch.isfinite(total) else 1.0], device=dist.device),
                              torch.distributed.ReduceOp.MAX)
        finite = finite and not bad.item()
        if finite:
            sums += torch.stack([total.detach(), cls, lm]).double()
        else:
            total = total * float("nan")
        engine.backward(total * dist.world, scale_wrt_gas=False)
        engine.step()
    if not finite and engine.was_step_applied():  # fill_ds_config rejects such configs up front
        raise TrainingDiverged("DeepSpeed applied an update with NaN gradients: this configuration has no "
                               "overflow check (ZeRO stage 0 in fp32?)")
    return dist.all_reduce(sums).tolist() if finite else None


# ---------------------------------------------------------------------------------------
# evaluation

def classifier_predictions(engine, eval_table: dict, pack_tokens: int, rows_per_batch: int, pad_id: int,
                           dist: Dist) -> list[int]:
    """Classifier head only, sharded over ranks; every rank runs the same number of
    forwards (ZeRO-3 gathers are collective), predictions are gathered to all ranks."""
    plan = plan_micro_batches(eval_table["length"], pack_tokens, rows_per_batch, seed=0, epoch=0)
    n_iter = math.ceil(len(plan) / dist.world)
    preds: dict[int, int] = {}
    with torch.no_grad():
        for it in range(n_iter):
            j = it * dist.world + dist.rank
            rows = plan[j] if j < len(plan) else plan[0]  # a dummy forward keeps ranks in step
            b = collate(rows, eval_table, pad_id)
            logits = engine(**batch_inputs(b, dist.device), eval_only=True)
            if j < len(plan):
                flat = [i for row in rows for i in row]
                preds.update(zip(flat, logits.argmax(-1).tolist()))
    preds = dist.gather_dict(preds)
    return [preds[i] for i in range(len(eval_table["label"]))]


def write_predictions(path: str, eval_table: dict, preds: dict) -> None:
    """One line per eval example (id, gold label, each head's prediction), so methods can be
    compared paired, example by example (the experiment harness reads these)."""
    rows = []
    for i, ex_id in enumerate(eval_table["id"]):
        row = {"id": ex_id, "label": eval_table["label"][i], **{k: v[i] for k, v in preds.items()}}
        if eval_table["group"][i] is not None:
            row["group"] = eval_table["group"][i]
        rows.append(row)
    atomic_write_jsonl(path, rows)


def score(task, preds: list[int], eval_table: dict) -> dict:
    return task.score(preds, eval_table["label"], eval_table["group"])


# ---------------------------------------------------------------------------------------
# the run

def _load_split(task, path, what, tokenizer, special, data_args, *, with_reasoning, seed, cache_dir, dist,
                limit: int = 0):
    from .data.pipeline import HUB_PREFIX, build_training_set, load_examples
    from .data.report import DataReport

    if not path:
        raise ValueError(f"--{what} is required")
    if not path.startswith(HUB_PREFIX) and not os.path.exists(path):
        raise FileNotFoundError(f"{what.replace('_', ' ')} not found: {path}")
    examples = load_examples(task, path)
    report = DataReport()
    if limit:
        if limit > len(examples):
            raise ValueError(f"max_train_examples={limit} but {path} holds {len(examples)} examples")
        report.count("examples_beyond_max_train_examples", len(examples) - limit)
        examples = examples[:limit]
    # rank 0 builds the tokenised cache first; the others then load it
    for turn in ((0,), tuple(range(1, dist.world))):
        if dist.rank in turn:
            # and across jobs/nodes sharing the file system, one builder at a time (locks.py)
            with locks.cache_lock(cache_dir) if dist.rank == 0 and cache_dir else contextlib.nullcontext():
                ds, report = build_training_set(task, examples, tokenizer, special, data_args,
                                                with_reasoning=with_reasoning, seed=seed,
                                                cache_dir=cache_dir, report=report)
        dist.barrier()
    table = {k: list(ds[k]) for k in (*ROW_COLUMNS, "length")}
    groups = {ex.id: ex.group for ex in examples}
    table["group"] = [groups.get(i) for i in table["id"]]
    return table, report


def run(model_args, data_args, loss_args, train_args) -> dict:
    """Train, evaluate and export; returns the final eval metrics (empty without an
    eval file). Collective: every rank calls it."""
    import deepspeed

    from .data.tasks import get_task

    dist = init_distributed()
    deepspeed.runtime.utils.set_random_seed(train_args.seed)
    task = get_task(data_args.task)
    out = train_args.output_dir
    os.makedirs(out, exist_ok=True)

    def reduce_max(t):
        return dist.all_reduce(t.to(dist.device), torch.distributed.ReduceOp.MAX).cpu()

    # preemption.py / locks.py: signals only set a flag, checked at each step boundary;
    # one live run per output dir (a second job stops here with a clear message)
    stop_flag = preemption.PreemptionFlag()
    out_lock = locks.lock_output_dir(out, dist.rank, reduce_max)
    base_cfg = load_ds_config(train_args.ds_config)
    # a provisional fill: zero.Init needs a valid config before the batch sizes are known
    pre_cfg = fill_ds_config(base_cfg, micro_rows=data_args.rows_per_batch, gas=1, world=dist.world,
                             lr=train_args.lr, weight_decay=train_args.weight_decay, warmup_steps=1,
                             total_steps=2, max_grad_norm=train_args.max_grad_norm, device=dist.device)
    model, tokenizer, special, hf_ds = build_model(model_args, len(task.labels), pre_cfg)

    cache_dir = data_args.cache_dir or os.path.join(out, "cache")
    with_reasoning = loss_args.alpha > 0
    train_table, report = _load_split(task, data_args.train_file, "train_file", tokenizer, special, data_args,
                                      with_reasoning=with_reasoning, seed=train_args.seed,
                                      cache_dir=cache_dir, dist=dist, limit=data_args.max_train_examples)
    eval_table = None
    if data_args.eval_file:
        eval_table, _ = _load_split(task, data_args.eval_file, "eval_file", tokenizer, special, data_args,
                                    with_reasoning=False, seed=train_args.seed, cache_dir=cache_dir, dist=dist)
    if dist.rank == 0:
        log(0, report.format())
        report.write(os.path.join(out, "data_report.json"))
        if with_reasoning and data_args.rationale_mode != "none" and not data_args.rationale_file:
            log(0, "warning: alpha > 0 but no --rationale_file: sequences are [x, <ANS>, y] (label-only)")

    n_train = len(train_table["length"])
    stream, M, total_steps, order_why = data_order(train_args, data_args, train_table["length"], dist.world)
    gas = M // dist.world
    hidden = getattr(model.config, "hidden_size", None)
    ds_cfg = fill_ds_config(base_cfg, micro_rows=data_args.rows_per_batch, gas=gas, world=dist.world,
                            lr=train_args.lr, weight_decay=train_args.weight_decay,
                            warmup_steps=train_args.warmup_steps, total_steps=total_steps,
                            max_grad_norm=train_args.max_grad_norm, device=dist.device, hidden_size=hidden)
    derived = {"world_size": dist.world, "micro_batches_per_step": M, "gradient_accumulation_steps": gas,
               "total_steps": total_steps, "train_examples": n_train, "batching": order_why,
               "micro_batches_per_epoch": len(stream.plan(0)), "special_token_ids": list(special)}
    if dist.rank == 0:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({**resolved_config(model_args, data_args, loss_args, train_args),
                       "derived": derived, "deepspeed": ds_cfg}, f, indent=2)
        log(0, f"world {dist.world}, device {dist.device}, ZeRO {zero_stage(ds_cfg)}, {M} micro-batches/step "
               f"({gas} per rank), {total_steps} steps, {n_train} train examples; batching {order_why}")

    step_flops = StepFlops.from_model(model.backbone)
    train_dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else \
        torch.float16 if ds_cfg.get("fp16", {}).get("enabled") else next(model.backbone.parameters()).dtype
    peak = peak_tflops(dist.device, train_dtype, train_args.peak_tflops)
    wrapper = DualHeadLoss(model, loss_args)
    old_arch = sanitize_cuda_arch_list()
    if old_arch and dist.rank == 0:
        log(0, f"TORCH_CUDA_ARCH_LIST={old_arch!r} -> {os.environ['TORCH_CUDA_ARCH_LIST']!r} for DeepSpeed's op builder")
    engine, _, _, _ = deepspeed.initialize(model=wrapper, model_parameters=param_groups(wrapper, train_args.weight_decay),
                                           config=ds_cfg)

    ckpt_root = os.path.join(out, "checkpoints")
    start_step, guard = 0, NonFiniteGuard(train_args.nan_patience)
    if train_args.resume != "none":
        root, tag = ckpt_root, None
        if train_args.resume == "auto":
            tag = checkpoint.find_resumable(ckpt_root)
        else:
            root, tag = os.path.split(os.path.normpath(train_args.resume))
        if tag is not None:
            state = checkpoint.load(engine, root, tag, rank=dist.rank)
            start_step = int(state["step"])
            guard = NonFiniteGuard(train_args.nan_patience, state.get("nonfinite_steps", 0),
                                   state.get("nonfinite_in_row", 0))
            log(dist.rank, f"resumed from {os.path.join(root, tag)} at step {start_step} "
                           f"(epoch {state.get('epoch')}, micro-batch {state.get('micro_index')})")
        elif dist.rank == 0:
            log(0, f"--resume auto: no complete checkpoint in {ckpt_root}; starting fresh")
    if start_step == 0:
        start_warmup_schedule(ds_cfg, engine.lr_scheduler)  # else the first two updates run at lr 0

    if dist.rank == 0:  # a requeued run appends to the same log; its marker is consumed
        repair_jsonl_tail(os.path.join(out, "metrics.jsonl"))
        preemption.clear_marker(out)
    monitor = Monitor(dist.rank, out, train_args.tensorboard_dir, total_steps, start_step, train_args.progress)
    if start_step == 0:
        for i in range(min(train_args.log_sequences, n_train)):
            monitor.text("train/sequences", tokenizer.decode(train_table["input_ids"][i]), i)
    pad_id = tokenizer.pad_token_id
    eval_history, metrics, last_preds = [], {}, {}

    eval_mode = resolve_eval_mode(train_args.eval_mode, loss_args.beta)
    if eval_table is not None and dist.rank == 0 and eval_mode == "classifier" and loss_args.beta == 0:
        log(0, "warning: --eval_mode classifier with beta 0: the classifier head is never trained")
    answers = SequenceBuilder(tokenizer, *special, task.verbalizers, SequenceSpec()).answers

    def run_eval(step):
        nonlocal metrics, last_preds
        metrics, head, last_preds = {}, None, {}
        engine.eval()  # no dropout
        if eval_mode in ("classifier", "both"):
            head = classifier_predictions(engine, eval_table, data_args.pack_tokens, data_args.rows_per_batch,
                                          pad_id, dist)
            metrics.update(score(task, head, eval_table))
            last_preds["pred"] = head
        if eval_mode in ("cot", "both"):
            cot, results = evaluate_cot(
                model.backbone, eval_table, answers=answers, reason_id=special[0], ans_id=special[1],
                pad_id=pad_id, eos_id=tokenizer.eos_token_id, dist=dist, max_new_tokens=train_args.cot_max_new_tokens,
                batch_size=train_args.cot_batch_size, synced_gpus=dist.world > 1 and zero_stage(ds_cfg) == 3)
            metrics.update({f"cot_{k}": v for k, v in score(task, cot, eval_table).items()})
            last_preds["cot_pred"] = cot
            fin = dist.all_reduce(torch.tensor([float(sum(sum(r.finished) for r in results)),
                                                float(sum(len(r.finished) for r in results))], device=dist.device))
            metrics["cot_finished"] = fin[0].item() / max(1.0, fin[1].item())  # rationales that reached <ANS>
            if head is not None:
                metrics["cot_agreement"] = sum(a == b for a, b in zip(head, cot)) / max(1, len(cot))
            if results:
                samples = [tokenizer.decode(r) for r in results[0].rationales[:2]]
                monitor.text("eval/cot_rationales", "\n\n".join(samples), step)
        engine.train()
        monitor.scalars(step, {f"eval/{k}": v for k, v in metrics.items()}, kind="eval")
        eval_history.append({"step": step, **metrics})
        log(dist.rank, f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def save(done):
        epoch, index = stream.locate(done * M)
        return checkpoint.save(engine, ckpt_root, done,
                               {"step": done, "epoch": epoch, "micro_index": index,
                                "nonfinite_steps": guard.total, "nonfinite_in_row": guard.in_row},
                               rank=dist.rank, world=dist.world, keep=train_args.keep_checkpoints)

    try:
        for step in range(start_step, total_steps):
            t0 = time.time()
            lr = engine.get_lr()[0]  # the rate this step's update uses
            wrapper.alpha = alpha_at(step, total_steps, loss_args.alpha, loss_args.alpha_schedule,
                                     loss_args.alpha_floor, loss_args.alpha_switch_fraction)
            first = step * M + dist.rank * gas
            plans = [stream[first + j] for j in range(gas)]
            batches = [collate(rows, train_table, pad_id) for rows in plans]
            sum_sq = sum(train_table["length"][i] ** 2 for rows in plans for row in rows for i in row)
            counts = torch.tensor([sum(b.n_lm_tokens for b in batches),
                                   sum(int((b.cls_labels != -100).sum()) for b in batches),
                                   sum(b.n_real_tokens for b in batches), sum(b.n_segments for b in batches),
                                   sum(b.budget for b in batches), sum_sq], dtype=torch.float64, device=dist.device)
            n_lm, n_cls, n_real, n_seg, budget, sum_sq = dist.all_reduce(counts).tolist()
            step_losses = optimizer_step(engine, batches, dist, n_lm, n_cls)
            step_finite = step_losses is not None
            loss, loss_cls, loss_lm = step_losses or (float("nan"),) * 3
            guard.update(step_finite, step + 1)
            dt = max(time.time() - t0, 1e-9)
            done = step + 1
            grad_norm = engine.get_global_grad_norm()
            values = {"train/lr": lr, "train/alpha": wrapper.alpha, "perf/real_tokens_per_s": n_real / dt,
                      "perf/samples_per_s": n_seg / dt, "perf/packing_efficiency": n_real / max(budget, 1),
                      "train/nonfinite_steps": guard.total}
            tflops = step_flops(n_real, n_lm, sum_sq) / dt / 1e12 / dist.world  # per device
            values["perf/model_tflops_per_device"] = tflops
            if peak:
                values["perf/mfu"] = tflops / peak
            if dist.device.type == "cuda":
                values["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
            if step_finite:
                values.update({"train/loss_total": loss, "train/loss_cls": loss_cls, "train/loss_lm": loss_lm})
            if grad_norm is not None and math.isfinite(float(grad_norm)):
                values["train/grad_norm"] = float(grad_norm)
            if done % train_args.log_every == 0 or done == total_steps:
                monitor.scalars(done, values)
            monitor.advance(1, loss=loss if step_finite else float("nan"))
            if not step_finite:
                log(dist.rank, f"step {done}: NaN/inf loss, step skipped (no update; {guard.in_row} in a row, "
                               f"{guard.total} in all)")
            if eval_table is not None and train_args.eval_every and done % train_args.eval_every == 0 \
                    and done < total_steps:
                run_eval(done)
            saved = train_args.save_every and done % train_args.save_every == 0 and done < total_steps
            if saved:
                save(done)
            signum = stop_flag.agreed(reduce_max)  # every rank stops at the same step
            if signum and done < total_steps:
                tag = checkpoint.tag_for(done) if saved else save(done)
                if dist.rank == 0:
                    preemption.write_marker(out, done, signum, tag)
                log(dist.rank, f"signal {signum}: checkpoint {tag} written at step {done}; exiting "
                               f"with code {preemption.EXIT_PREEMPTED}")
                raise preemption.Preempted(done, signum)
        if eval_table is not None:
            run_eval(total_steps)
            if dist.rank == 0:
                atomic_write_json(os.path.join(out, "eval_results.json"),
                                  {"task": task.name, "step": total_steps, "metrics": metrics,
                                   "history": eval_history}, indent=2)
                write_predictions(os.path.join(out, "eval_predictions.jsonl"), eval_table, last_preds)
        monitor.hparams({"alpha": loss_args.alpha, "beta": loss_args.beta, "task": task.name,
                         "backbone": model_args.model, "method": loss_args.method or "custom",
                         "lora": model_args.lora, "lr": train_args.lr},
                        {f"hparam/{k}": v for k, v in metrics.items()} or {"hparam/none": 0.0})
        if train_args.export_final:
            from .export import export_final

            export_final(engine, model, tokenizer, special, task, model_args, data_args, loss_args,
                         os.path.join(out, "final"), dist)
    finally:
        monitor.close()
        stop_flag.restore()
        out_lock.release()
        engine.destroy()
    del hf_ds
    return metrics
