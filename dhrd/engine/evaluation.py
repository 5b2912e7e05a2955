"""Evaluation during and after training: the classifier head (sharded over ranks) and, by
``--eval_mode``, CoT decoding with the LM head; per-example predictions for paired
comparisons."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

from ..data.order import batch_inputs, collate
from ..data.packing import plan_micro_batches
from ..data.sequences import SequenceBuilder, SequenceSpec
from ..fileio import atomic_write_json, atomic_write_jsonl
from .cot_eval import evaluate_cot, resolve_eval_mode
from .dist import Dist
from .ds_config import zero_stage
from .monitor import log

if TYPE_CHECKING:
    from .trainer import Trainer


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
            t.model.backbone, self.table, answers=self.answers, reason_id=t.special.reason, ans_id=t.special.answer,
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
