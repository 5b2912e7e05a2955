"""Evaluation during and after training: the classifier head (sharded over ranks) and, by
``--eval_mode``, CoT decoding with the LM head; per-example predictions for paired
comparisons."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

from ..data.order import collate, model_inputs
from ..data.packing import plan_micro_batches
from ..data.sequences import SequenceBuilder, SequenceSpec
from ..fileio import atomic_write_json, atomic_write_jsonl
from .cot_eval import evaluate_cot
from .dist import Dist
from .monitor import Monitor

log = logging.getLogger(__name__)


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
            logits = engine(**model_inputs(b, dist.device)).cls_logits
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


def periodic(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps (0: never), before the last: what happens after the last
    step (the final evaluation, the final export) is the end of the run's business."""
    return bool(every) and step % every == 0 and step < total_steps


def score(task, preds: list[int], eval_table: dict) -> dict:
    return task.score(preds, eval_table["label"], eval_table["group"])


@dataclass(frozen=True)
class EvalSettings:
    """What the Evaluator does and when: the resolved ``--eval_mode``, its cadence, and the
    batch sizes of the classifier and CoT passes."""

    mode: str                    # classifier | cot | both (cot_eval.resolve_eval_mode)
    every: int                   # --eval_every (0: only at the end)
    total_steps: int
    pack_tokens: int
    rows_per_batch: int
    cot_max_new_tokens: int
    cot_batch_size: int
    synced_gpus: bool = False    # ZeRO-3 over several ranks: generate() in step on every rank
    head_trained: bool = True    # beta > 0


class Evaluator:
    """Scores the classifier head (and, by --eval_mode, CoT decoding) on the eval split,
    every ``eval_every`` steps and at the end; keeps the history and the last predictions.
    Built with what it reads (keyword-only), not with the trainer."""

    def __init__(self, *, engine, backbone, table: dict | None, task, tokenizer, special, dist: Dist,
                 monitor: Monitor, settings: EvalSettings):
        self.engine, self.backbone, self.table, self.task = engine, backbone, table, task
        self.tokenizer, self.special, self.dist, self.monitor, self.s = tokenizer, special, dist, monitor, settings
        self.history: list[dict] = []
        self.metrics: dict = {}
        self.preds: dict = {}
        self.answers = SequenceBuilder(tokenizer, *special, task.verbalizers, SequenceSpec()).answers
        if table is not None and dist.rank == 0 and settings.mode == "classifier" and not settings.head_trained:
            log.warning("warning: --eval_mode classifier with beta 0: the classifier head is never trained")

    def should_evaluate(self, step: int) -> bool:
        return self.table is not None and periodic(step, self.s.every, self.s.total_steps)

    def evaluate(self, step: int) -> dict:
        metrics, head, preds = {}, None, {}
        self.engine.eval()  # no dropout
        if self.s.mode in ("classifier", "both"):
            head = classifier_predictions(self.engine, self.table, self.s.pack_tokens, self.s.rows_per_batch,
                                          self.tokenizer.pad_token_id, self.dist)
            metrics.update(score(self.task, head, self.table))
            preds["pred"] = head
        if self.s.mode in ("cot", "both"):
            metrics.update(self._cot(step, head, preds))
        self.engine.train()
        self.metrics, self.preds = metrics, preds
        self.monitor.scalars(step, {f"eval/{k}": v for k, v in metrics.items()}, kind="eval")
        self.history.append({"step": step, **metrics})
        log.info(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _cot(self, step: int, head, preds: dict) -> dict:
        """The LM head writes a rationale, then each verbalizer is scored after <ANS>."""
        dist, tok = self.dist, self.tokenizer
        cot, results = evaluate_cot(
            self.backbone, self.table, answers=self.answers, reason_id=self.special.reason,
            ans_id=self.special.answer, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, dist=dist,
            max_new_tokens=self.s.cot_max_new_tokens, batch_size=self.s.cot_batch_size,
            synced_gpus=self.s.synced_gpus)
        metrics = {f"cot_{k}": v for k, v in score(self.task, cot, self.table).items()}
        preds["cot_pred"] = cot
        fin = dist.all_reduce(torch.tensor([float(sum(sum(r.finished) for r in results)),
                                            float(sum(len(r.finished) for r in results))], device=dist.device))
        metrics["cot_finished"] = fin[0].item() / max(1.0, fin[1].item())  # rationales that reached <ANS>
        if head is not None:
            metrics["cot_agreement"] = sum(a == b for a, b in zip(head, cot)) / max(1, len(cot))
        if results:
            samples = [tok.decode(r) for r in results[0].rationales[:2]]
            self.monitor.text("eval/cot_rationales", "\n\n".join(samples), step)
        return metrics

    def write(self, out: str, step: int) -> None:
        """eval_results.json (metrics + history) and eval_predictions.jsonl (rank 0)."""
        if self.dist.rank == 0:
            atomic_write_json(os.path.join(out, "eval_results.json"),
                              {"task": self.task.name, "step": step, "metrics": self.metrics,
                               "history": self.history}, indent=2)
            write_predictions(os.path.join(out, "eval_predictions.jsonl"), self.table, self.preds)
