"""The model behind ``dhrd serve`` and ``dhrd predict``: a lean classifier directory or a
Hugging Face sequence-classification directory, behind one interface (``predict`` texts,
``render`` rows, ``labels``, ``task``), loaded and checked with one prediction before any
port is bound or input is read, so that a directory that cannot be used is one line and
exit code 2 (and both verbs accept the same directories)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass
class Question:
    """A multiple-choice row, rendered: one input per option, and the options' texts."""

    inputs: list[str]
    options: list[str]

    def __len__(self) -> int:  # the --max_text_chars check: its longest input
        return max(map(len, self.inputs))


class LeanModel:
    """A lean classifier directory: x is tokenised as training did; rows render with the
    task's own Python template (Task.render, or Task.render_options for a choice model),
    which training used."""

    format = "lean"

    def __init__(self, path: str, device: str, dtype: str | None, batch_size: int, int8: bool | None = None,
                 max_batch_tokens: int | None = None):
        from ..data.tasks import get_task
        from .classifier import LeanClassifier

        self.clf = LeanClassifier.load(path, device=device, dtype=dtype, int8=int8)
        self.task = self.clf.config.task
        self.labels = list(self.clf.config.labels)
        self._task = get_task(self.task)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.choice = self.clf.config.formulation == "choice"
        self.accepts_rows, self.accepts_texts = True, not self.choice
        self.warm_up_item = Question(["warm-up"] * len(self.labels), self.labels) if self.choice else "warm-up"

    def predict(self, items: Sequence):
        import torch

        if self.choice:
            return torch.stack(self.predict_choices([q.inputs for q in items]))
        return self.clf.predict(items, self.batch_size, self.max_batch_tokens)

    def predict_choices(self, questions: Sequence[Sequence[str]]) -> list:
        """Per question, its options' probabilities (questions may differ in option count)."""
        return self.clf.predict_choices(questions, self.batch_size, self.max_batch_tokens)

    def render(self, row: Mapping):
        if self.choice:
            return Question(self._task.render_options(row), [o.strip() for o in self._task.options(row)])
        return self._task.render(row)


class HFModel:
    """A Hugging Face sequence-classification directory: the model pools its own last
    non-pad token, so batches are right-padded and the config is told the pad id we pad
    with; rows render with the Jinja2 template stored under ``dhrd_input_template``, if
    any. As with HF's pipeline, inputs are cut only at the model's own length limit (not
    at the training max_input_len: see dhrd/export/hf.py)."""

    format = "hf"
    accepts_texts, warm_up_item, choice = True, "warm-up", False

    def __init__(self, path: str, device: str, dtype: str | None, batch_size: int = 32,
                 max_batch_tokens: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..data.templates import CONFIG_KEY
        from ..model.backbones import NO_REMOTE_CODE, check_device, refuse_remote_code
        from .lean_format import refuse_pickled_weights

        check_device(device)
        refuse_remote_code(path)
        refuse_pickled_weights(path)
        tok = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
        tok.padding_side = "right"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype or "float32"),
                                                                   use_safetensors=True, **NO_REMOTE_CODE)
        model.config.pad_token_id = tok.pad_token_id  # the id the model looks for is the one we pad with
        self.model, self.tokenizer, self.device = model.to(device).eval(), tok, torch.device(device)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        meta = getattr(model.config, "dhrd", None)  # what dhrd.export.hf records
        self.task = meta.get("task") if isinstance(meta, dict) else None
        self.template = getattr(model.config, CONFIG_KEY, None)
        self.accepts_rows = self.template is not None
        limits = [tok.model_max_length, getattr(model.config, "max_position_embeddings", None)]
        self.max_length = min(n for n in limits if n is not None)

    def predict(self, texts: Sequence[str]):
        """Class probabilities [N, C] in input order, in batches of similar length (as the
        lean classifier batches)."""
        import torch

        from .classifier import length_buckets

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = torch.empty(len(ids), len(self.labels))
        for batch in length_buckets([len(x) for x in ids], self.batch_size, self.max_batch_tokens):
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out[batch] = self.model(**enc).logits.float().softmax(-1).cpu()
        return out

    def render(self, row: Mapping) -> str:
        from jinja2 import TemplateError

        from ..data.templates import render_input

        try:
            return render_input(self.template, row)
        except (TemplateError, TypeError) as e:  # a field of the wrong shape for the template
            raise ValueError(f"the input template cannot render this row ({type(e).__name__}: {e})") from None


def model_format(path: str) -> str:
    """``lean`` or ``hf`` from the directory's files alone, before any weights load."""
    from ..fileio import read_json
    from .lean_format import LEAN_CONFIG

    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory")
    if os.path.isfile(os.path.join(path, LEAN_CONFIG)):
        return "lean"
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"{path}: not a model directory: neither {LEAN_CONFIG} (a lean classifier) nor "
                         "config.json (a Hugging Face sequence-classification model)")
    try:
        data = read_json(config)
    except OSError as e:
        raise ValueError(f"{config}: unreadable ({e})") from None
    archs = data.get("architectures") if isinstance(data, dict) else None
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)
            and archs[0].endswith("ForSequenceClassification")):
        raise ValueError(f"{path}: config.json names architectures={json.dumps(archs)}, not a "
                         f"*ForSequenceClassification model (and there is no {LEAN_CONFIG})")
    return "hf"


def model_task(path: str) -> str:
    """The task a model directory was trained on, from its config alone (so ``dhrd
    predict`` checks its input before any weights load)."""
    from ..fileio import read_json
    from .lean_format import LeanConfig

    path = str(path)
    if model_format(path) == "lean":
        return LeanConfig.load(path).task
    config = os.path.join(path, "config.json")
    meta = read_json(config).get("dhrd")
    task = meta.get("task") if isinstance(meta, dict) else None
    if not isinstance(task, str):
        raise ValueError(f"{config}: field 'dhrd.task' missing: not a dhrd export, so the task of the input is "
                         "unknown (export with dhrd export --format hf)")
    return task


def load_model(path: str, device: str = "cpu", dtype: str | None = None, batch_size: int = 32,
               int8: bool | None = None, max_batch_tokens: int | None = None):
    """LeanModel or HFModel, checked with one prediction. Any failure is a ValueError
    naming the directory: whatever breaks, the directory cannot be used. ``int8`` is a
    lean option (None: the directory's own flag)."""
    path = str(path)
    fmt = model_format(path)
    if fmt == "hf" and int8:
        raise ValueError(f"{path}: --int8 is a lean-format option (a Hugging Face directory holds float weights)")
    try:
        model = (LeanModel(path, device, dtype, batch_size, int8, max_batch_tokens) if fmt == "lean"
                 else HFModel(path, device, dtype, batch_size, max_batch_tokens))
        model.predict([model.warm_up_item])
    except Exception as e:  # noqa: BLE001 - reported as one line; DHRD_DEBUG=1 shows the cause
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if first.startswith(path):
            raise ValueError(first) from e
        raise ValueError(f"{path}: cannot load the {fmt} classifier on {device} ({type(e).__name__}: {first})") from e
    return model
