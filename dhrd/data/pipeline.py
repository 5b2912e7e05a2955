"""From examples + a rationale file to the tokenised training set, with one DataReport
that accounts for every example and rationale."""

from __future__ import annotations

from .choice import tokenize_choice_items
from .rationales import attach_rationales, read_rationales
from .report import DataReport
from .sequences import SequenceBuilder, SequenceSpec, tokenize_items
from .tasks import check_formulation

HUB_PREFIX = "hub:"


def load_examples(task, source: str, *, require_labels: bool = True):
    """Examples from a local JSONL path, or from the task's hub dataset when ``source`` is
    ``hub:<split>`` (e.g. ``hub:validation``; needs network and the hub cache)."""
    if source.startswith(HUB_PREFIX):
        return task.load_hub(source[len(HUB_PREFIX):], require_labels=require_labels)
    return task.read(source, require_labels=require_labels)


def sequence_spec(data_args, *, with_reasoning: bool = True) -> SequenceSpec:
    return SequenceSpec(lm_sections=data_args.lm_sections, rationale_fraction=data_args.rationale_fraction,
                        max_seq_len=data_args.max_seq_len, max_input_len=data_args.max_input_len,
                        with_reasoning=with_reasoning)


def build_training_set(task, examples, tokenizer, special_ids: tuple[int, int], data_args, *,
                       with_reasoning: bool = True, seed: int = 0, cache_dir: str | None = None,
                       report: DataReport | None = None):
    """Tokenised training set (a ``datasets.Dataset`` with input_ids, lm_mask, cls_pos,
    label, length, id, spans). ``with_reasoning=False`` (alpha = 0) keeps x only. With
    ``data_args.formulation`` choice, one item per question (dhrd.data.choice)."""
    formulation = getattr(data_args, "formulation", "classify")
    check_formulation(task, formulation)
    report = report if report is not None else DataReport()
    report.count("examples_read", len(examples))
    rationales = None
    if with_reasoning and data_args.rationale_file and data_args.rationale_mode != "none":
        rationales = read_rationales(data_args.rationale_file, task.labels, report)
    items = attach_rationales(examples, rationales, task.labels, mode=data_args.rationale_mode,
                              consistency=data_args.label_consistency, seed=seed,
                              per_example=data_args.rationales_per_example, report=report)
    builder = SequenceBuilder(tokenizer, *special_ids, task.verbalizers,
                              sequence_spec(data_args, with_reasoning=with_reasoning))
    if formulation == "choice":
        return tokenize_choice_items(task, items, builder, pack_tokens=data_args.pack_tokens, cache_dir=cache_dir,
                                     report=report), report
    return tokenize_items(items, builder, cache_dir=cache_dir, report=report), report
