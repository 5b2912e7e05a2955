"""Export a trained classifier as a standard Hugging Face ``<Arch>ForSequenceClassification``
directory: ``AutoModelForSequenceClassification``, ``pipeline("text-classification")``,
vLLM's pooling runner and SGLang load it with no project code and no remote code.

Why it computes what our classifier computes:

* the head: only the ``linear`` head (``--head linear``: one bias-free projection) has
  the shape of HF's ``score`` layer; the paper's MLP head exists only in the lean format;
* the pooled token: HF pools at the rightmost token that is not ``pad_token_id``; our
  classifier pools at the last token of x. The exported tokenizer pads on the right with
  a pad token that x never contains (a dedicated ``<PAD>`` where the base tokenizer had
  none or shared it with EOS: an input ending in EOS would otherwise pool elsewhere);
* the input: ``tokenizer(text)`` is exactly how training tokenised x (the tokenizer's
  own special tokens); the text itself comes from the task template, stored as Jinja2
  in ``config.json`` (:data:`dhrd.data.templates.CONFIG_KEY`) and shown in the card.
  Inputs longer than the training ``max_input_len`` are where the two may differ:
  training kept the first token and the last ``max_input_len - 1``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch

from ..data.templates import CONFIG_KEY, FIELDS_KEY, render_input, template_for
from ..fileio import atomic_write
from ..model.dual_head import head_kind
from ..serve.lean_format import DTYPES
from .lean import Trained, dir_bytes, load_trained, resolve_source, source_formulation, training_meta

PAD_TOKEN = "<PAD>"
HF_FORMAT_VERSION = 1
# architectures whose sequence classifier vLLM may run through its Transformers fallback
# backend, where last-token pooling of this export was not verified
VLLM_UNVERIFIED = ("gemma3", "gemma3_text")


CHOICE_HAS_NO_HF_CLASS = (
    "this is a multiple-choice model (--formulation choice: one score per answer option): transformers has no "
    "standard class for a decoder multiple-choice model (its *ForMultipleChoice classes are encoders), so it "
    "cannot be exported --format hf; export --format lean and serve it with dhrd predict / dhrd serve")


def serving_notes(model_type: str) -> list[str]:
    if model_type in VLLM_UNVERIFIED:
        return [f"vLLM: {model_type} sequence classifiers may run on vLLM's Transformers fallback backend, whose "
                "pooling of this export is unverified: compare a few vLLM predictions with `dhrd predict` or the "
                "transformers pipeline before serving"]
    return []


@dataclass
class HFExportReport:
    source: str
    out_dir: str
    architecture: str
    pad_token: str
    pad_added: bool
    out_bytes: int
    notes: list[str]

    def format(self) -> str:
        return "\n".join([f"source {self.source}\nHugging Face classifier {self.out_dir}: {self.architecture}, "
                          f"pad token {self.pad_token!r}{' (added)' if self.pad_added else ''}, "
                          f"{self.out_bytes / 2**20:.2f} MiB"] + [f"note: {n}" for n in self.notes])


def refuse_unexportable(trained: Trained) -> None:
    """The HF class computes a linear head at the last token: anything else cannot be
    represented without custom code, which the export must not contain."""
    if trained.formulation == "choice":
        raise ValueError(CHOICE_HAS_NO_HF_CLASS)
    kind = head_kind(trained.model.head)
    if kind != "linear":
        raise ValueError(f"this classifier has the {kind} head: a standard <Arch>ForSequenceClassification holds "
                         "only a single linear layer ('score'). Train with --head linear to export --format hf; "
                         "the MLP head is served from the lean format (--format lean, dhrd predict / dhrd serve)")
    if trained.model.pooling != "last":
        raise ValueError(f"this classifier pools by {trained.model.pooling!r}: HF sequence classifiers pool the "
                         "last token only. Train with --pooling last to export --format hf")


def ensure_pad_token(tokenizer) -> tuple[int, bool]:
    """A pad id distinct from EOS (``<PAD>`` added to the tokenizer when needed).
    Returns (pad id, whether it was added)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return pad, False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer.convert_tokens_to_ids(PAD_TOKEN), True


def sequence_classifier(trained: Trained, dtype: str):
    """The ``<Arch>ForSequenceClassification`` holding our decoder and head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification
    from transformers.integrations import deepspeed as hf_deepspeed

    from ..model.lora import merged_backbone

    hf_deepspeed.unset_hf_deepspeed_config()
    backbone = merged_backbone(trained.model, trained.lora)
    decoder = getattr(backbone, backbone.base_model_prefix)
    tokenizer = copy.deepcopy(trained.tokenizer)
    pad, added = ensure_pad_token(tokenizer)
    task = trained.task
    cfg = copy.deepcopy(decoder.config)
    cfg.num_labels = len(task.labels)
    cfg.id2label = dict(enumerate(task.labels))
    cfg.label2id = {label: i for i, label in enumerate(task.labels)}
    cfg.problem_type = "single_label_classification"
    cfg.vocab_size = decoder.get_input_embeddings().num_embeddings
    # set after the resize below where <PAD> is new (an embedding's padding_idx must exist)
    cfg.pad_token_id = pad if pad < cfg.vocab_size else None
    try:
        seq = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    except ValueError as e:  # no sequence-classification class for this architecture
        raise ValueError(f"{type(cfg).__name__}: transformers has no ForSequenceClassification class for it "
                         f"({str(e).splitlines()[0]}); export --format lean instead") from None
    score = getattr(seq, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.bias is not None:
        raise ValueError(f"{type(seq).__name__} has no bias-free 'score' layer: export --format lean instead")
    body = getattr(seq, seq.base_model_prefix)
    missing, unexpected = body.load_state_dict(decoder.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"{type(seq).__name__}: the decoder does not fit its body: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if pad >= body.get_input_embeddings().num_embeddings:  # the new <PAD> needs a row
        seq.resize_token_embeddings(pad + 1, mean_resizing=False)
        with torch.no_grad():  # never attended (right padding, masked): zeros keep it inert
            seq.get_input_embeddings().weight[pad:] = 0
    seq.config.pad_token_id = pad
    with torch.no_grad():
        score.weight.copy_(trained.model.head.out.weight)
    seq.config.architectures = [type(seq).__name__]
    tokenizer.padding_side = "right"  # causal attention: real tokens never see the pads
    return seq.to(getattr(torch, dtype)).eval(), tokenizer, added


def export_hf(path: str, out_dir: str, *, tag: str | None = None, dtype: str = "float32") -> HFExportReport:
    """A training output (ZeRO checkpoint or final/) -> a standard HF classifier directory."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if source_formulation(resolve_source(path, tag)) == "choice":
        raise ValueError(CHOICE_HAS_NO_HF_CLASS)  # said before the weights load
    trained = load_trained(path, tag)
    refuse_unexportable(trained)
    seq, tokenizer, added = sequence_classifier(trained, dtype)
    template, fields = template_for(trained.task.name)
    meta = training_meta(trained.source)
    setattr(seq.config, CONFIG_KEY, template)
    setattr(seq.config, FIELDS_KEY, list(fields))
    seq.config.dhrd = {"format_version": HF_FORMAT_VERSION, "task": trained.task.name,
                       "verbalizers": list(trained.task.verbalizers), "max_input_len": trained.max_input_len,
                       "training": meta}
    os.makedirs(out_dir, exist_ok=True)
    seq.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write(os.path.join(out_dir, "README.md"), model_card(trained, meta, seq, tokenizer, template))
    return HFExportReport(trained.source.path, out_dir, type(seq).__name__, tokenizer.pad_token, added,
                          dir_bytes(out_dir), serving_notes(seq.config.model_type))


def _example_row(task_name: str, fields) -> dict:
    """A made-up row with every field the template reads, for the card's example."""
    if task_name == "cqa":
        return {"question": "Where would you put a plate after washing it?",
                "choices": ["cupboard", "table", "restaurant", "oven", "floor"]}
    if task_name == "wsc":
        return {"text": "The trophy does not fit in the suitcase because it is too big.",
                "target": {"span1_text": "the trophy", "span2_text": "it"}}
    samples = {"premise": "A man is playing a guitar on stage.", "hypothesis": "A person is making music.",
               "passage": "The Nile is the longest river in Africa.", "question": "is the nile in africa",
               "answer": "Yes", "choice1": "He practised.", "choice2": "He slept.", "sentence1": "He sat by the bank.",
               "sentence2": "The bank approved the loan.", "word": "bank"}
    row = {f: samples.get(f, "...") for f in fields}
    if task_name == "copa":
        row["question"] = "cause"
    return row


def model_card(trained: Trained, meta: dict, seq, tokenizer, template: str) -> str:
    """README.md in Hub conventions: YAML metadata (written by huggingface_hub, which quotes
    and nests it as the Hub reads it), what it is, how to call it, limits."""
    from huggingface_hub import EvalResult, ModelCardData

    task = trained.task
    ev = (meta.get("eval") or {}).get("metrics") or {}
    fields = template_for(task.name)[1]
    row = _example_row(task.name, fields)
    example = render_input(template, row)
    results = [EvalResult(task_type="text-classification", dataset_type=task.name, dataset_name=task.name,
                          metric_type=k, metric_value=v) for k, v in ev.items() if isinstance(v, (int, float))]
    data = ModelCardData(library_name="transformers", pipeline_tag="text-classification",
                         tags=["dhrd", "reasoning-distillation", task.name], base_model=meta.get("backbone") or None,
                         model_name=f"{task.name}-dhrd-classifier" if results else None, eval_results=results or None)
    labels = ", ".join(f"`{lab}`" for lab in task.labels)
    train = {k: meta.get(k) for k in ("method", "alpha", "beta", "rationale_mode", "step", "lora_merged")}
    lines = [
        "---", data.to_yaml(), "---", "", f"# {task.name} classifier trained with Dual-Head Reasoning Distillation", "",
        f"A `{type(seq).__name__}` ({task.description}) with labels {labels}. It was trained with two heads: "
        "this pooled classification head, and the language-model head supervised by teacher rationales "
        "(training only, not part of this export). At inference it is a plain classifier: one forward pass, "
        "no generated text.", "",
        "## Use", "",
        "Format the raw fields with the template the model was trained on (`config.json` key "
        f"`{CONFIG_KEY}`, Jinja2), then classify:", "",
        "```python", "import json", "from jinja2.sandbox import ImmutableSandboxedEnvironment",
        "from transformers import pipeline", "",
        'clf = pipeline("text-classification", model="PATH", top_k=None)',
        'template = json.load(open("PATH/config.json"))["' + CONFIG_KEY + '"]',
        f"row = {json.dumps(row, ensure_ascii=False)}",
        "text = ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(template).render(**row)",
        "print(clf(text))", "```", "",
        "The text for that row:", "", "```", example, "```", "",
        "Serving: `vllm serve PATH --runner pooling` (then `POST /classify`), SGLang "
        "`--is-embedding` (`/v1/classify`), or `dhrd serve PATH`. Text Embeddings Inference does not serve "
        "decoder classifiers on NVIDIA GPUs.", "",
        "## Training", "",
        f"- backbone: `{meta.get('backbone')}`; task: `{task.name}`; max input length {trained.max_input_len} tokens",
        f"- DHRD settings: {json.dumps(train)}",
        f"- dev metrics at the exported step: {json.dumps(ev) if ev else 'not recorded'}", "",
        "## Limitations", "",
        f"- Inputs longer than {trained.max_input_len} tokens were cut during training (the first token and the "
        "last ones kept); pass such inputs truncated the same way, or expect lower accuracy.",
        f"- Padding must stay on the right with pad token `{tokenizer.pad_token}` (as saved): the model pools the "
        "last token that is not padding.",
        *[f"- {n}" for n in serving_notes(seq.config.model_type)],
        "- The model answers only with its labels; it writes no rationale (the reasoning head was used in "
        "training only). Its accuracy holds for inputs like its training data.",
        ""]
    return "\n".join(lines)
