"""Tokenised training sequences ``[x, <REASON>, r, <ANS>, y, eos]`` with section spans.

x, r and y are tokenised separately and concatenated as ids, so the pooled token (the
last token of x) is exactly the token the lean classifier sees at inference, where x is
tokenised alone. Each sequence carries a per-token mask of the LM targets it
supervises, chosen by ``lm_sections``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..progress import Progress, is_terminal
from .report import DataReport

SECTIONS = ("x", "reason", "rationale", "ans", "answer")
# Which sections' tokens are LM *targets* for each lm_sections choice. The <REASON>
# marker always follows x and is trivial to predict, so only "all" supervises it.
SUPERVISED = {
    "all": {"x", "reason", "rationale", "ans", "answer"},
    "rationale": {"rationale", "ans"},
    "rationale+answer": {"rationale", "ans", "answer"},
}


@dataclass(frozen=True)
class SequenceSpec:
    """Everything that decides the token ids; hashed into the cache key."""

    lm_sections: str = "all"
    rationale_fraction: float = 1.0
    max_seq_len: int = 1024
    max_input_len: int = 992
    with_reasoning: bool = True  # False: x only (pooled baseline, inference)


class SequenceBuilder:
    """Turns (x text, rationale text or None, label) into ids + LM mask + spans."""

    def __init__(self, tokenizer, reason_id: int, ans_id: int, verbalizers: tuple[str, ...],
                 spec: SequenceSpec):
        self.tok, self.spec = tokenizer, spec
        self.reason_id, self.ans_id = reason_id, ans_id
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.answers = [self._ids(" " + v) for v in verbalizers]
        self.supervised = SUPERVISED[spec.lm_sections]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def input_ids(self, text: str) -> tuple[list[int], bool]:
        """x with the tokenizer's own special tokens (BOS), left-truncated to
        max_input_len keeping the first token: the end of x holds the question."""
        return self._truncate(self.tok(text)["input_ids"])

    def _truncate(self, ids: list[int]) -> tuple[list[int], bool]:
        limit = self.spec.max_input_len
        if len(ids) <= limit:
            return ids, False
        return ids[:1] + ids[len(ids) - limit + 1:], True

    def input_ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``input_ids`` of many texts in one tokenizer call (a fast tokenizer encodes them
        in parallel), truncated the same way."""
        if not texts:
            return []
        return [self._truncate(ids)[0] for ids in self.tok(list(texts))["input_ids"]]

    def build(self, text: str, rationale: str | None, label: int | None) -> dict:
        spec = self.spec
        x, x_cut = self.input_ids(text)
        row = {"input_ids": x, "cls_pos": len(x) - 1, "label": -100 if label is None else label,
               "input_truncated": x_cut, "rationale_cut": 0, "rationale_fraction_cut": 0,
               "lm_dropped": False}
        parts = [("x", x)]
        if spec.with_reasoning and label is not None:
            answer = self.answers[label] + self.eos
            r = self._ids(" " + rationale) if rationale else []
            if r and spec.rationale_fraction < 1.0:
                keep = math.ceil(len(r) * spec.rationale_fraction)
                row["rationale_fraction_cut"] = int(keep < len(r))
                r = r[:keep]
            room = spec.max_seq_len - len(x) - len(answer) - 1 - (1 if r else 0)
            if room < 0:
                row["lm_dropped"] = True  # x fills the budget: classifier only
            else:
                if len(r) > room:
                    row["rationale_cut"] = len(r) - room
                    r = r[:room]
                if r:
                    parts += [("reason", [self.reason_id]), ("rationale", r)]
                parts += [("ans", [self.ans_id]), ("answer", answer)]
        ids, mask, spans = [], [], {}
        for name, part in parts:
            spans[name] = (len(ids), len(ids) + len(part))
            ids += part
            mask += [int(name in self.supervised)] * len(part)
        if len(parts) == 1:
            mask = [0] * len(mask)  # x only (no reasoning, unlabeled, too long): no LM targets
        if mask:
            mask[0] = 0  # the first token is nobody's target
        row.update(input_ids=ids, lm_mask=mask, length=len(ids),
                   spans=json.dumps(spans))
        return row


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    h = hashlib.sha256(json.dumps(vocab).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(str(tokenizer("fingerprint check, 123")["input_ids"]).encode())
    return h.hexdigest()[:16]


def rationale_rows(items) -> list[tuple[int, object, str | None]]:
    """(slot, item, rationale) rows: one per example (row j = example j), then one per
    further rationale of an example with k (``slot``: the example a row belongs to;
    data/order.py trains one row of each example an epoch)."""
    rows = [(j, it, it.rationale) for j, it in enumerate(items)]
    return rows + [(j, it, alt) for j, it in enumerate(items) for alt in it.alternatives]


def tokenize_items(items, builder: SequenceBuilder, *, cache_dir: str | None = None,
                   report: DataReport | None = None, num_proc: int | None = None):
    """Tokenise TrainItems through ``datasets.map``; with ``cache_dir`` the result is
    cached on disk under a key of the data, the tokenizer and the SequenceSpec, so a
    rerun (or another node on a shared file system) loads it instead of rebuilding."""
    import datasets

    rows = rationale_rows(items)
    columns = {
        "id": [it.example.id for _, it, _ in rows],
        "slot": [j for j, _, _ in rows],
        "text": [it.example.text for _, it, _ in rows],
        "rationale": [r for _, _, r in rows],
        "label_in": [it.example.label if it.example.label is not None else -100 for _, it, _ in rows],
    }
    ds = datasets.Dataset.from_dict(columns)

    # datasets draws its bar on a terminal; a log gets periodic lines (dhrd.progress.quiet_library_bars)
    lines = Progress(len(items), "tokenising", unit="ex", bar=False,
                     enabled=not is_terminal(sys.stderr) and (num_proc or 1) == 1)

    def fn(batch):
        rows = [builder.build(t, r, None if lab == -100 else lab)
                for t, r, lab in zip(batch["text"], batch["rationale"], batch["label_in"])]
        lines.update(len(rows))
        return {k: [row[k] for row in rows] for k in rows[0]} if rows else {}

    kwargs = dict(batched=True, remove_columns=["text", "rationale", "label_in"], num_proc=num_proc,
                  desc="tokenising")
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        key = hashlib.sha256(json.dumps([columns, tokenizer_fingerprint(builder.tok),
                                         asdict(builder.spec), builder.reason_id, builder.ans_id,
                                         builder.answers]).encode()).hexdigest()[:20]
        kwargs.update(cache_file_name=os.path.join(cache_dir, f"tokenized-{key}.arrow"),
                      load_from_cache_file=True)
    else:
        kwargs.update(keep_in_memory=True)
    out = ds.map(fn, **kwargs)
    lines.close()
    if report is not None:
        report.count("input_truncated", sum(out["input_truncated"]))
        report.count("rationale_truncated_fraction", sum(out["rationale_fraction_cut"]))
        report.count("rationale_truncated_to_fit", sum(bool(c) for c in out["rationale_cut"]))
        report.count("lm_dropped_input_too_long", sum(out["lm_dropped"]))
    return out
