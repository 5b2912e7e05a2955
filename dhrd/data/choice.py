"""The multiple-choice formulation (``--formulation choice``): one training item per
question, holding one segment per answer option and, when the LM term is on, one LM
sequence for the whole question.

* option k: ``[question, option k]`` (``Task.render_options``), tokenised as the
  classifier input x always is (``SequenceBuilder.input_ids``), pooled at its last token,
  no LM targets: the choice head scores it alone, as an encoder's ``ForMultipleChoice``
  scores ``[CLS] question [SEP] option``;
* the LM sequence ``[x, <REASON>, r, <ANS>, y]`` of the classify formulation (x lists all
  the options), exactly ``SequenceBuilder.build``'s: the reasoning head reads the question
  with its options once, not once per option.

The item is packed whole (``seg_lens`` marks its segments, ``cls_pos`` lists the option
tokens), so a question's options always share a micro-batch and an optimizer step: the
data order counts questions, and a step's examples are whole questions."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

from .report import DataReport
from .sequences import SequenceBuilder, rationale_rows, tokenizer_fingerprint


class ChoiceBuilder:
    """(question text, option texts, rationale or None, label) -> one packed item."""

    def __init__(self, builder: SequenceBuilder):
        self.seq = builder

    def build(self, text: str, options: list[str], rationale: str | None, label: int | None) -> dict:
        ids, seg_lens, pooled, cut = [], [], [], 0
        for option in options:
            x, x_cut = self.seq.input_ids(option)
            pooled.append(len(ids) + len(x) - 1)
            seg_lens.append(len(x))
            ids += x
            cut += x_cut
        mask = [0] * len(ids)
        lm = {"input_truncated": False, "rationale_cut": 0, "rationale_fraction_cut": 0, "lm_dropped": False}
        if self.seq.spec.with_reasoning and label is not None:
            lm = self.seq.build(text, rationale, label)
            seg_lens.append(lm["length"])
            ids += lm["input_ids"]
            mask += lm["lm_mask"]
        return {"input_ids": ids, "lm_mask": mask, "cls_pos": pooled, "seg_lens": seg_lens,
                "label": -100 if label is None else label, "length": len(ids), "n_options": len(options),
                "options_truncated": cut, "input_truncated": lm["input_truncated"],
                "rationale_cut": lm["rationale_cut"], "rationale_fraction_cut": lm["rationale_fraction_cut"],
                "lm_dropped": lm["lm_dropped"]}


def tokenize_choice_items(task, items, builder: SequenceBuilder, *, pack_tokens: int,
                          cache_dir: str | None = None, report: DataReport | None = None):
    """TrainItems -> a ``datasets.Dataset`` of question items (cached on disk like the
    classify formulation's, under a key of the data, the tokenizer and the spec). A
    question longer than ``pack_tokens`` is refused naming it: it cannot be split."""
    import datasets

    rows = rationale_rows(items)  # k rationales a question: k items, one trained an epoch
    columns = {"id": [it.example.id for _, it, _ in rows], "slot": [j for j, _, _ in rows],
               "text": [it.example.text for _, it, _ in rows],
               "options": [task.render_options(it.example.fields) for _, it, _ in rows],
               "rationale": [r for _, _, r in rows],
               "label_in": [-100 if it.example.label is None else it.example.label for _, it, _ in rows]}
    choice = ChoiceBuilder(builder)

    def fn(batch):
        rows = [choice.build(t, o, r, None if y == -100 else y)
                for t, o, r, y in zip(batch["text"], batch["options"], batch["rationale"], batch["label_in"])]
        return {k: [row[k] for row in rows] for k in rows[0]} if rows else {}

    kwargs = dict(batched=True, remove_columns=["text", "options", "rationale", "label_in"], desc="tokenising options")
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        key = hashlib.sha256(json.dumps(["choice", columns, tokenizer_fingerprint(builder.tok), asdict(builder.spec),
                                         builder.reason_id, builder.ans_id, builder.answers]).encode())
        kwargs.update(cache_file_name=os.path.join(cache_dir, f"choice-{key.hexdigest()[:20]}.arrow"),
                      load_from_cache_file=True)
    else:
        kwargs.update(keep_in_memory=True)
    ds = datasets.Dataset.from_dict(columns).map(fn, **kwargs)
    long = [(i, n) for i, n in zip(ds["id"], ds["length"]) if n > pack_tokens]
    if long:
        raise ValueError(f"{len(long)} question(s) longer than --pack_tokens {pack_tokens} (first: id {long[0][0]!r}, "
                         f"{long[0][1]} tokens): with --formulation choice a question packs whole (all its options "
                         "and its LM sequence); raise --pack_tokens or lower --max_seq_len")
    if report is not None:
        report.count("choice_questions", len(items))
        report.count("choice_option_sequences", sum(ds["n_options"]))
        report.count("choice_options_truncated", sum(ds["options_truncated"]))
        report.count("input_truncated", sum(ds["input_truncated"]))
        report.count("rationale_truncated_fraction", sum(ds["rationale_fraction_cut"]))
        report.count("rationale_truncated_to_fit", sum(bool(c) for c in ds["rationale_cut"]))
        report.count("lm_dropped_input_too_long", sum(ds["lm_dropped"]))
    return ds
