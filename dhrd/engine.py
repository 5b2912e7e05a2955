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


class Evaluator:
    """Scores the classifier head (and, by --eval_mode, CoT decoding) on the eval split,
    every ``eval_every`` steps and at the end; keeps the history and the last predictions."""

    def __init__(self, trainer: "Trainer"):
        t = trainer
        self.t, self.table = t, t.eval_table
        self.mode = resolve_eval_mode(t.train_args.eval_mode, t.loss_args.beta)
        self.history: list[dict] = []
        self.metrics: dict = {}
        self.preds: dict = {}
        self.answers = SequenceBuilder(t.tokenizer, *t.special, t.task.verbalizers, SequenceSpec()).answers
        if self.table is not None and t.dist.rank == 0 and self.mode == "classifier" and t.loss_args.beta == 0:
            log(0, "warning: --eval_mode classifier with beta 0: the classifier head is never trained")

    def should_evaluate(self, step: int) -> bool:
        every = self.t.train_args.eval_every
        return self.table is not None and bool(every) and step % every == 0 and step < self.t.total_steps

    def evaluate(self, step: int) -> dict:
        t = self.t
        metrics, head, preds = {}, None, {}
        t.engine.eval()  # no dropout
        if self.mode in ("classifier", "both"):
            head = classifier_predictions(t.engine, self.table, t.data_args.pack_tokens, t.data_args.rows_per_batch,
                                          t.pad_id, t.dist)
            metrics.update(score(t.task, head, self.table))
            preds["pred"] = head
        if self.mode in ("cot", "both"):
            metrics.update(self._cot(step, head, preds))
        t.engine.train()
        self.metrics, self.preds = metrics, preds
        t.monitor.scalars(step, {f"eval/{k}": v for k, v in metrics.items()}, kind="eval")
        self.history.append({"step": step, **metrics})
        log(t.dist.rank, f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _cot(self, step: int, head, preds: dict) -> dict:
        """The LM head writes a rationale, then each verbalizer is scored after <ANS>."""
        t = self.t
        cot, results = evaluate_cot(
            t.model.backbone, self.table, answers=self.answers, reason_id=t.special[0], ans_id=t.special[1],
            pad_id=t.pad_id, eos_id=t.tokenizer.eos_token_id, dist=t.dist,
            max_new_tokens=t.train_args.cot_max_new_tokens, batch_size=t.train_args.cot_batch_size,
            synced_gpus=t.dist.world > 1 and zero_stage(t.ds_cfg) == 3)
        metrics = {f"cot_{k}": v for k, v in score(t.task, cot, self.table).items()}
        preds["cot_pred"] = cot
        fin = t.dist.all_reduce(torch.tensor([float(sum(sum(r.finished) for r in results)),
                                              float(sum(len(r.finished) for r in results))], device=t.dist.device))
        metrics["cot_finished"] = fin[0].item() / max(1.0, fin[1].item())  # rationales that reached <ANS>
        if head is not None:
            metrics["cot_agreement"] = sum(a == b for a, b in zip(head, cot)) / max(1, len(cot))
        if results:
            samples = [t.tokenizer.decode(r) for r in results[0].rationales[:2]]
            t.monitor.text("eval/cot_rationales", "\n\n".join(samples), step)
        return metrics

    def write(self, out: str, step: int) -> None:
        """eval_results.json (metrics + history) and eval_predictions.jsonl (rank 0)."""
        if self.t.dist.rank == 0:
            atomic_write_json(os.path.join(out, "eval_results.json"),
                              {"task": self.t.task.name, "step": step, "metrics": self.metrics,
                               "history": self.history}, indent=2)
            write_predictions(os.path.join(out, "eval_predictions.jsonl"), self.table, self.preds)


class Checkpointer:
    """When to save (``--save_every``, and on a preemption signal), what a checkpoint
    records (the step and data position, the non-finite counters), and resuming."""

    def __init__(self, trainer: "Trainer"):
        self.t = trainer
        self.root = os.path.join(trainer.out, "checkpoints")

    def should_save(self, step: int) -> bool:
        every = self.t.train_args.save_every
        return bool(every) and step % every == 0 and step < self.t.total_steps

    def save(self, step: int) -> str:
        t = self.t
        epoch, index = t.stream.locate(step * t.M)
        return checkpoint.save(t.engine, self.root, step,
                               {"step": step, "epoch": epoch, "micro_index": index,
                                "nonfinite_steps": t.guard.total, "nonfinite_in_row": t.guard.in_row},
                               rank=t.dist.rank, world=t.dist.world, keep=t.train_args.keep_checkpoints)

    def resume(self, how: str) -> int:
        """Load the checkpoint ``how`` names (``auto``: the newest complete one, if any);
        returns the step to start from and restores the non-finite counters."""
        t = self.t
        if how == "none":
            return 0
        root, tag = (self.root, checkpoint.find_resumable(self.root)) if how == "auto" else \
            os.path.split(os.path.normpath(how))
        if tag is None:
            if t.dist.rank == 0:
                log(0, f"--resume auto: no complete checkpoint in {self.root}; starting fresh")
            return 0
        state = checkpoint.load(t.engine, root, tag, rank=t.dist.rank)
        t.guard = NonFiniteGuard(t.train_args.nan_patience, state.get("nonfinite_steps", 0),
                                 state.get("nonfinite_in_row", 0))
        log(t.dist.rank, f"resumed from {os.path.join(root, tag)} at step {state['step']} "
                         f"(epoch {state.get('epoch')}, micro-batch {state.get('micro_index')})")
        return int(state["step"])


class Trainer:
    """One training run. Construction does processes, the output lock, model, data, the
    DeepSpeed engine and resume; ``train()`` is the loop (``train_step`` per optimizer
    step, evaluation and checkpoints as their objects decide); ``close()`` releases what
    construction took. Collective: every rank builds one and calls the same methods."""

    def __init__(self, model_args, data_args, loss_args, train_args):
        import deepspeed

        from .data.tasks import get_task

        self.model_args, self.data_args, self.loss_args, self.train_args = model_args, data_args, loss_args, train_args
        self.dist = init_distributed()
        deepspeed.runtime.utils.set_random_seed(train_args.seed)
        self.task = get_task(data_args.task)
        self.out = train_args.output_dir
        os.makedirs(self.out, exist_ok=True)
        # preemption.py / locks.py: signals only set a flag, checked at each step boundary;
        # one live run per output dir (a second job stops here with a clear message)
        self.engine = self.monitor = self._hf_ds = self.out_lock = None
        self.stop_flag = preemption.PreemptionFlag()
        try:
            self.out_lock = locks.lock_output_dir(self.out, self.dist.rank, self.reduce_max)
            self._build()
        except BaseException:
            self.close()
            raise

    def reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        return self.dist.all_reduce(t.to(self.dist.device), torch.distributed.ReduceOp.MAX).cpu()

    # -- construction ---------------------------------------------------------------

    def _build(self) -> None:
        self.base_cfg = load_ds_config(self.train_args.ds_config)
        self._build_model()
        self._load_data()
        self._plan_steps()
        self._init_engine()
        self.guard = NonFiniteGuard(self.train_args.nan_patience)
        self.checkpointer = Checkpointer(self)
        self.start_step = self.checkpointer.resume(self.train_args.resume)
        if self.start_step == 0:
            start_warmup_schedule(self.ds_cfg, self.engine.lr_scheduler)  # else the first two updates run at lr 0
        self._open_logs()
        self.evaluator = Evaluator(self)

    def _build_model(self) -> None:
        a = self.train_args
        # a provisional fill: zero.Init needs a valid config before the batch sizes are known
        pre_cfg = fill_ds_config(self.base_cfg, micro_rows=self.data_args.rows_per_batch, gas=1,
                                 world=self.dist.world, lr=a.lr, weight_decay=a.weight_decay, warmup_steps=1,
                                 total_steps=2, max_grad_norm=a.max_grad_norm, device=self.dist.device)
        self.model, self.tokenizer, self.special, self._hf_ds = build_model(self.model_args, len(self.task.labels),
                                                                            pre_cfg)
        self.pad_id = self.tokenizer.pad_token_id

    def _load_data(self) -> None:
        d, t = self.data_args, self.train_args
        cache_dir = d.cache_dir or os.path.join(self.out, "cache")
        with_reasoning = self.loss_args.alpha > 0
        common = dict(tokenizer=self.tokenizer, special=self.special, data_args=d, seed=t.seed,
                      cache_dir=cache_dir, dist=self.dist)
        self.train_table, report = _load_split(self.task, d.train_file, "train_file", with_reasoning=with_reasoning,
                                               limit=d.max_train_examples, **common)
        self.eval_table = None
        if d.eval_file:
            self.eval_table, _ = _load_split(self.task, d.eval_file, "eval_file", with_reasoning=False, **common)
        if self.dist.rank == 0:
            log(0, report.format())
            report.write(os.path.join(self.out, "data_report.json"))
            if with_reasoning and d.rationale_mode != "none" and not d.rationale_file:
                log(0, "warning: alpha > 0 but no --rationale_file: sequences are [x, <ANS>, y] (label-only)")

    def _plan_steps(self) -> None:
        """The data order, the DeepSpeed config that fits it, and config.json."""
        a, dist = self.train_args, self.dist
        n_train = len(self.train_table["length"])
        self.stream, self.M, self.total_steps, why = data_order(a, self.data_args, self.train_table["length"],
                                                                dist.world)
        self.gas = self.M // dist.world
        self.ds_cfg = fill_ds_config(self.base_cfg, micro_rows=self.data_args.rows_per_batch, gas=self.gas,
                                     world=dist.world, lr=a.lr, weight_decay=a.weight_decay,
                                     warmup_steps=a.warmup_steps, total_steps=self.total_steps,
                                     max_grad_norm=a.max_grad_norm, device=dist.device,
                                     hidden_size=getattr(self.model.config, "hidden_size", None))
        derived = {"world_size": dist.world, "micro_batches_per_step": self.M, "gradient_accumulation_steps": self.gas,
                   "total_steps": self.total_steps, "train_examples": n_train, "batching": why,
                   "micro_batches_per_epoch": len(self.stream.plan(0)), "special_token_ids": list(self.special)}
        if dist.rank == 0:
            atomic_write_json(os.path.join(self.out, "config.json"),
                              {**resolved_config(self.model_args, self.data_args, self.loss_args, a),
                               "derived": derived, "deepspeed": self.ds_cfg}, indent=2)
            log(0, f"world {dist.world}, device {dist.device}, ZeRO {zero_stage(self.ds_cfg)}, {self.M} "
                   f"micro-batches/step ({self.gas} per rank), {self.total_steps} steps, {n_train} train examples; "
                   f"batching {why}")

    def _init_engine(self) -> None:
        import deepspeed

        ds_cfg, dist = self.ds_cfg, self.dist
        self.step_flops = StepFlops.from_model(self.model.backbone)
        dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else \
            torch.float16 if ds_cfg.get("fp16", {}).get("enabled") else next(self.model.backbone.parameters()).dtype
        self.peak = peak_tflops(dist.device, dtype, self.train_args.peak_tflops)
        self.wrapper = DualHeadLoss(self.model, self.loss_args)
        old_arch = sanitize_cuda_arch_list()
        if old_arch and dist.rank == 0:
            log(0, f"TORCH_CUDA_ARCH_LIST={old_arch!r} -> {os.environ['TORCH_CUDA_ARCH_LIST']!r} for DeepSpeed's "
                   "op builder")
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.wrapper, model_parameters=param_groups(self.wrapper, self.train_args.weight_decay),
            config=ds_cfg)

    def _open_logs(self) -> None:
        if self.dist.rank == 0:  # a requeued run appends to the same log; its marker is consumed
            repair_jsonl_tail(os.path.join(self.out, "metrics.jsonl"))
            preemption.clear_marker(self.out)
        a = self.train_args
        self.monitor = Monitor(self.dist.rank, self.out, a.tensorboard_dir, self.total_steps, self.start_step,
                               a.progress)
        if self.start_step == 0:
            for i in range(min(a.log_sequences, len(self.train_table["length"]))):
                self.monitor.text("train/sequences", self.tokenizer.decode(self.train_table["input_ids"][i]), i)

    # -- the loop -------------------------------------------------------------------

    def train_step(self, step: int) -> tuple[dict, bool]:
        """Optimizer step ``step`` (0-based): its micro-batches of this rank, the global
        counts, forward/backward/update. Returns the values to log and whether it was finite."""
        t0 = time.time()
        dist, table = self.dist, self.train_table
        lr = self.engine.get_lr()[0]  # the rate this step's update uses
        a = self.loss_args
        self.wrapper.alpha = alpha_at(step, self.total_steps, a.alpha, a.alpha_schedule, a.alpha_floor,
                                      a.alpha_switch_fraction)
        first = step * self.M + dist.rank * self.gas
        plans = [self.stream[first + j] for j in range(self.gas)]
        batches = [collate(rows, table, self.pad_id) for rows in plans]
        sum_sq = sum(table["length"][i] ** 2 for rows in plans for row in rows for i in row)
        counts = torch.tensor([sum(b.n_lm_tokens for b in batches), sum(int((b.cls_labels != -100).sum()) for b in batches),
                               sum(b.n_real_tokens for b in batches), sum(b.n_segments for b in batches),
                               sum(b.budget for b in batches), sum_sq], dtype=torch.float64, device=dist.device)
        n_lm, n_cls, n_real, n_seg, budget, sum_sq = dist.all_reduce(counts).tolist()
        losses = optimizer_step(self.engine, batches, dist, n_lm, n_cls)
        self.guard.update(losses is not None, step + 1)
        dt = max(time.time() - t0, 1e-9)
        tflops = self.step_flops(n_real, n_lm, sum_sq) / dt / 1e12 / dist.world  # per device
        values = {"train/lr": lr, "train/alpha": self.wrapper.alpha, "perf/real_tokens_per_s": n_real / dt,
                  "perf/samples_per_s": n_seg / dt, "perf/packing_efficiency": n_real / max(budget, 1),
                  "train/nonfinite_steps": self.guard.total, "perf/model_tflops_per_device": tflops}
        if self.peak:
            values["perf/mfu"] = tflops / self.peak
        if dist.device.type == "cuda":
            values["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
        if losses is not None:
            values.update(dict(zip(("train/loss_total", "train/loss_cls", "train/loss_lm"), losses)))
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            values["train/grad_norm"] = float(grad_norm)
        return values, losses is not None

    def _after_step(self, done: int, values: dict, finite: bool) -> None:
        """Logging, evaluation, checkpoints and the preemption check after step ``done``."""
        if done % self.train_args.log_every == 0 or done == self.total_steps:
            self.monitor.scalars(done, values)
        self.monitor.advance(1, loss=values.get("train/loss_total", float("nan")))
        if not finite:
            log(self.dist.rank, f"step {done}: NaN/inf loss, step skipped (no update; {self.guard.in_row} in a "
                                f"row, {self.guard.total} in all)")
        if self.evaluator.should_evaluate(done):
            self.evaluator.evaluate(done)
        saved = self.checkpointer.should_save(done)
        if saved:
            self.checkpointer.save(done)
        signum = self.stop_flag.agreed(self.reduce_max)  # every rank stops at the same step
        if signum and done < self.total_steps:
            tag = checkpoint.tag_for(done) if saved else self.checkpointer.save(done)
            if self.dist.rank == 0:
                preemption.write_marker(self.out, done, signum, tag)
            log(self.dist.rank, f"signal {signum}: checkpoint {tag} written at step {done}; exiting "
                                f"with code {preemption.EXIT_PREEMPTED}")
            raise preemption.Preempted(done, signum)

    def train(self) -> dict:
        """Every remaining step, the final evaluation and the export; returns the final
        eval metrics (empty without an eval file)."""
        for step in range(self.start_step, self.total_steps):
            values, finite = self.train_step(step)
            self._after_step(step + 1, values, finite)
        if self.eval_table is not None:
            self.evaluator.evaluate(self.total_steps)
            self.evaluator.write(self.out, self.total_steps)
        m, lo, a = self.model_args, self.loss_args, self.train_args
        self.monitor.hparams({"alpha": lo.alpha, "beta": lo.beta, "task": self.task.name, "backbone": m.model,
                              "method": lo.method or "custom", "lora": m.lora, "lr": a.lr},
                             {f"hparam/{k}": v for k, v in self.evaluator.metrics.items()} or {"hparam/none": 0.0})
        if a.export_final:
            from .export import export_final

            export_final(self.engine, self.model, self.tokenizer, self.special, self.task, m, self.data_args, lo,
                         os.path.join(self.out, "final"), self.dist)
        return self.evaluator.metrics

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.stop_flag.restore()
        if self.out_lock is not None:
            self.out_lock.release()
        if self.engine is not None:
            self.engine.destroy()
        self._hf_ds = None


def run(model_args, data_args, loss_args, train_args) -> dict:
    """Train, evaluate and export; returns the final eval metrics (empty without an
    eval file). Collective: every rank calls it."""
    trainer = Trainer(model_args, data_args, loss_args, train_args)
    try:
        return trainer.train()
    finally:
        trainer.close()
