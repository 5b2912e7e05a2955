"""The training run: ``Trainer`` (construction: processes, the output lock, model, data,
the step plan, the DeepSpeed engine and resume; ``train_step``; ``train``; ``close``) and
``run``, its driver. What DeepSpeed does (AdamW, the LR schedule, clipping, accumulation,
bf16, checkpoint shards) is left to it."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import torch

from ..alpha_schedule import alpha_at
from ..config import resolved_config
from ..data.order import CHOICE_COLUMNS, ROW_COLUMNS, collate, data_order
from ..fileio import atomic_write_json, read_json_or_none, repair_jsonl_tail
from ..logs import set_rank
from ..loss import DualHeadLoss
from ..model.builder import build_model, training_tokenizer
from ..model.compile import compile_blocks
from ..model.segment_attention import attention_path
from . import checkpoint, locks, preemption, provenance
from .cot_eval import resolve_eval_mode
from .dist import init_distributed
from .ds_config import (
    autocast_enabled,
    fill_ds_config,
    load_ds_config,
    native_bf16_cpu,
    sanitize_cuda_arch_list,
    start_warmup_schedule,
    zero_stage,
)
from .evaluation import EvalSettings, Evaluator, periodic
from .flops import StepFlops, peak_tflops
from .monitor import Monitor
from .step import NonFiniteGuard, optimizer_step, param_groups

log = logging.getLogger(__name__)


def load_split(task, path, what, tokenizer, special, data_args, *, with_reasoning, seed, cache_dir, dist,
                limit: int = 0):
    from ..data.pipeline import HUB_PREFIX, build_training_set, load_examples
    from ..data.report import DataReport

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
    extra = [c for c in ("slot", *CHOICE_COLUMNS) if c in ds.column_names]  # k rationales; choice items
    table = {k: list(ds[k]) for k in (*ROW_COLUMNS, "length", *extra)}
    groups = {ex.id: ex.group for ex in examples}
    table["group"] = [groups.get(i) for i in table["id"]]
    return table, report


class Checkpointer:
    """When to save (``--save_every``, and on a preemption signal), what a checkpoint
    records (the step and data position, the non-finite counters), and resuming. Built
    with what it uses (keyword-only), not with the trainer; the counters it saves and
    restores are the guard's ``state_dict()``."""

    def __init__(self, *, engine, root: str, dist, stream, micro_batches_per_step: int, total_steps: int,
                 save_every: int, keep: int):
        self.engine, self.root, self.dist, self.stream = engine, root, dist, stream
        self.M, self.total_steps, self.every, self.keep = micro_batches_per_step, total_steps, save_every, keep

    def should_save(self, step: int) -> bool:
        return periodic(step, self.every, self.total_steps)

    def save(self, step: int, guard: NonFiniteGuard) -> str:
        epoch, index = self.stream.locate(step * self.M)
        return checkpoint.save(self.engine, self.root, step,
                               {"step": step, "epoch": epoch, "micro_index": index, **guard.state_dict()},
                               rank=self.dist.rank, world=self.dist.world, keep=self.keep)

    def resume(self, how: str) -> tuple[int, dict]:
        """Load the checkpoint ``how`` names (``auto``: the newest complete one, if any);
        returns the step to start from and the state the checkpoint recorded ({} when fresh)."""
        if how == "none":
            return 0, {}
        root, tag = (self.root, checkpoint.find_resumable(self.root)) if how == "auto" else \
            os.path.split(os.path.normpath(how))
        if tag is None:
            if self.dist.rank == 0:
                log.info(f"--resume auto: no complete checkpoint in {self.root}; starting fresh")
            return 0, {}
        state = checkpoint.load(self.engine, root, tag, rank=self.dist.rank)
        log.info(f"resumed from {os.path.join(root, tag)} at step {state['step']} "
                 f"(epoch {state.get('epoch')}, micro-batch {state.get('micro_index')})")
        return int(state["step"]), state


class Trainer:
    """One training run. Construction does processes, the output lock, model, data, the
    DeepSpeed engine and resume; ``train()`` is the loop (``train_step`` per optimizer
    step, evaluation and checkpoints as their objects decide); ``close()`` releases what
    construction took. Collective: every rank builds one and calls the same methods."""

    def __init__(self, model_args, data_args, loss_args, train_args):
        import deepspeed

        from ..data.tasks import get_task

        self.model_args, self.data_args, self.loss_args, self.train_args = model_args, data_args, loss_args, train_args
        self.dist = init_distributed()
        set_rank(self.dist.rank)  # the log prefix: the process group's rank from here on
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
        self.tokenizer, self.special, new_token_ids, backbone_config = training_tokenizer(self.model_args)
        self.pad_id = self.tokenizer.pad_token_id
        self._load_data()
        self._plan_steps(backbone_config)
        self.model, self._hf_ds = build_model(self.model_args, len(self.task.labels), self.ds_cfg,
                                              tokenizer=self.tokenizer, new_token_ids=new_token_ids,
                                              zero3=zero_stage(self.ds_cfg) == 3,
                                              formulation=self.data_args.formulation)
        self._record_run()
        self._init_engine()
        a = self.train_args
        self.checkpointer = Checkpointer(engine=self.engine, root=os.path.join(self.out, "checkpoints"),
                                         dist=self.dist, stream=self.stream, micro_batches_per_step=self.M,
                                         total_steps=self.total_steps, save_every=a.save_every,
                                         keep=a.keep_checkpoints)
        self.start_step, state = self.checkpointer.resume(a.resume)
        self.guard = NonFiniteGuard(a.nan_patience)
        self.guard.load_state_dict(state)
        if self.start_step == 0:
            start_warmup_schedule(self.ds_cfg, self.engine.lr_scheduler)  # else the first two updates run at lr 0
        self._open_logs()
        self.evaluator = self._make_evaluator()

    def _make_evaluator(self) -> Evaluator:
        a, lo = self.train_args, self.loss_args
        settings = EvalSettings(mode=resolve_eval_mode(a.eval_mode, lo.beta), every=a.eval_every,
                                total_steps=self.total_steps, pack_tokens=self.data_args.pack_tokens,
                                rows_per_batch=self.data_args.rows_per_batch,
                                cot_max_new_tokens=a.cot_max_new_tokens, cot_batch_size=a.cot_batch_size,
                                synced_gpus=self.dist.world > 1 and zero_stage(self.ds_cfg) == 3,
                                head_trained=lo.beta > 0)
        return Evaluator(engine=self.engine, backbone=self.model.backbone, table=self.eval_table, task=self.task,
                         tokenizer=self.tokenizer, special=self.special, dist=self.dist, monitor=self.monitor,
                         settings=settings)

    def _load_data(self) -> None:
        d, t = self.data_args, self.train_args
        cache_dir = d.cache_dir or os.path.join(self.out, "cache")
        with_reasoning = self.loss_args.alpha > 0
        common = dict(tokenizer=self.tokenizer, special=self.special, data_args=d, seed=t.seed,
                      cache_dir=cache_dir, dist=self.dist)
        self.train_table, report = load_split(self.task, d.train_file, "train_file", with_reasoning=with_reasoning,
                                               limit=d.max_train_examples, **common)
        self.eval_table = None
        if d.eval_file:
            self.eval_table, _ = load_split(self.task, d.eval_file, "eval_file", with_reasoning=False, **common)
        if self.dist.rank == 0:
            log.info(report.format())
            report.write(os.path.join(self.out, "data_report.json"))
            if with_reasoning and d.rationale_mode != "none" and not d.rationale_file:
                log.warning("warning: alpha > 0 but no --rationale_file: sequences are [x, <ANS>, y] (label-only)")

    def _plan_steps(self, backbone_config) -> None:
        """The data order and the DeepSpeed config that fits it (filled once, here)."""
        a, dist = self.train_args, self.dist
        self.stream, self.M, self.total_steps, why = data_order(a, self.data_args, self.train_table["length"],
                                                                dist.world, slots=self.train_table.get("slot"))
        self.gas = self.M // dist.world
        self.ds_cfg = fill_ds_config(self.base_cfg, micro_rows=self.data_args.rows_per_batch, gas=self.gas,
                                     world=dist.world, lr=a.lr, weight_decay=a.weight_decay,
                                     warmup_steps=a.warmup_steps, total_steps=self.total_steps,
                                     max_grad_norm=a.max_grad_norm, device=dist.device,
                                     lr_schedule=a.lr_schedule, autocast=a.autocast,
                                     hidden_size=getattr(backbone_config, "hidden_size", None))
        self.derived = {"world_size": dist.world, "micro_batches_per_step": self.M,
                        "gradient_accumulation_steps": self.gas, "total_steps": self.total_steps,
                        "train_examples": self.stream.n_examples, "batching": why,
                        "micro_batches_per_epoch": len(self.stream.plan(0)), "special_token_ids": list(self.special)}

    def _record_run(self) -> None:
        """config.json (the resolved arguments, the plan, the DeepSpeed config, provenance)
        and the start-up log line; after the model load, which settles the attention path."""
        a, dist, derived = self.train_args, self.dist, self.derived
        n_train, why = derived["train_examples"], derived["batching"]
        if dist.rank == 0:
            path = os.path.join(self.out, "config.json")
            atomic_write_json(path, {**resolved_config(self.model_args, self.data_args, self.loss_args, a),
                                     "derived": derived, "deepspeed": self.ds_cfg,
                                     **provenance.with_history(provenance.environment(), read_json_or_none(path))},
                              indent=2)
            auto = " (auto)" if self.base_cfg.get("zero_optimization", {}).get("stage") == "auto" else ""
            log.info(f"world {dist.world}, device {dist.device}, ZeRO {zero_stage(self.ds_cfg)}{auto}, {self.M} "
                     f"micro-batches/step ({self.gas} per rank), {self.total_steps} steps, {n_train} train examples; "
                     f"batching {why}; attention {attention_path(self.model.config, dist.device)}")
            if autocast_enabled(self.ds_cfg):
                slow = dist.device.type == "cpu" and not native_bf16_cpu()
                log.info("bf16 autocast (fp32 weights and optimizer)" + (
                    "; warning: this CPU has no native bf16 (AVX512-BF16/AMX): bf16 matmuls are emulated, "
                    "likely slower than fp32" if slow else ""))

    def _init_engine(self) -> None:
        import deepspeed

        ds_cfg, dist = self.ds_cfg, self.dist
        self.step_flops = StepFlops.from_model(self.model.backbone)
        dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else \
            torch.float16 if ds_cfg.get("fp16", {}).get("enabled") else next(self.model.backbone.parameters()).dtype
        self.peak = peak_tflops(dist.device, dtype, self.train_args.peak_tflops)
        lo = self.loss_args
        self.wrapper = DualHeadLoss(self.model, beta=lo.beta, impl=lo.loss_impl, label_smoothing=lo.label_smoothing,
                                    z_loss=lo.z_loss)
        if self.train_args.compile:
            n = compile_blocks(self.model.backbone)
            if dist.rank == 0:
                log.info(f"--compile: {n} decoder blocks compiled in place (the first steps pay the compile)")
        old_arch = sanitize_cuda_arch_list()
        if old_arch and dist.rank == 0:
            log.info(f"TORCH_CUDA_ARCH_LIST={old_arch!r} -> {os.environ['TORCH_CUDA_ARCH_LIST']!r} for DeepSpeed's "
                     "op builder")
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.wrapper, model_parameters=param_groups(self.wrapper, self.train_args.weight_decay),
            config=ds_cfg)
        if dist.world == 1 and zero_stage(ds_cfg) == 0:
            self.engine.enable_backward_allreduce = False  # one process: nothing to reduce (saves a flat copy a step)

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
        alpha = alpha_at(step, self.total_steps, a.alpha, a.alpha_schedule, a.alpha_floor, a.alpha_switch_fraction)
        first = step * self.M + dist.rank * self.gas
        plans = [self.stream[first + j] for j in range(self.gas)]
        batches = [collate(rows, table, self.pad_id) for rows in plans]
        segs = table.get("seg_lens")  # a choice item's segments attend apart: attention FLOPs per segment
        sum_sq = sum(sum(n * n for n in segs[i]) if segs else table["length"][i] ** 2
                     for rows in plans for row in rows for i in row)
        counts = torch.tensor([sum(b.n_lm_tokens for b in batches),
                               sum(int((b.cls_labels != -100).sum()) for b in batches),
                               sum(b.n_real_tokens for b in batches), sum(b.n_segments for b in batches),
                               sum(b.budget for b in batches), sum_sq], dtype=torch.float64, device=dist.device)
        n_lm, n_cls, n_real, n_seg, budget, sum_sq = dist.all_reduce(counts).tolist()
        losses = optimizer_step(self.engine, batches, dist, n_lm, n_cls, alpha)
        self.guard.update(losses is not None, step + 1)
        dt = max(time.time() - t0, 1e-9)
        tflops = self.step_flops(n_real, n_lm, sum_sq) / dt / 1e12 / dist.world  # per device
        values = {"train/lr": lr, "train/alpha": alpha, "perf/real_tokens_per_s": n_real / dt,
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
        self.monitor.advance(1, cls=values.get("train/loss_cls", float("nan")),
                             lm=values.get("train/loss_lm", float("nan")),
                             **{"ex/s": round(values["perf/samples_per_s"], 2)})
        if not finite:
            log.warning(f"step {done}: NaN/inf loss, step skipped (no update; {self.guard.in_row} in a "
                        f"row, {self.guard.total} in all)")
        if self.evaluator.should_evaluate(done):
            self.evaluator.evaluate(done)
        saved = self.checkpointer.should_save(done)
        if saved:
            self.checkpointer.save(done, self.guard)
        signum = self.stop_flag.agreed(self.reduce_max)  # every rank stops at the same step
        if signum and done < self.total_steps:
            tag = checkpoint.tag_for(done) if saved else self.checkpointer.save(done, self.guard)
            if self.dist.rank == 0:
                preemption.write_marker(self.out, done, signum, tag)
            log.warning(f"signal {signum}: checkpoint {tag} written at step {done}; exiting "
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
            from .final import export_final

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

