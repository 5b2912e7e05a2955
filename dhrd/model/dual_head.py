"""DualHeadModel: any Hugging Face causal-LM decoder + a pooled classification head.

The reasoning head is the backbone's own LM head. ``forward`` returns hidden states and
class logits and never the ``[tokens x vocab]`` logits: the loss receives the hidden
states and the LM-head weight, so a fused loss projects only supervised tokens, chunk by
chunk.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers.utils import ModelOutput

from . import segment_attention

segment_attention.register()  # attn_implementation="dhrd_segments" (packed rows, per-segment attention)

REASON_TOKEN = "<REASON>"
ANSWER_TOKEN = "<ANS>"
POOLINGS = ("last", "mean")
HEADS = ("mlp", "linear")
HEAD_FILE = "classifier_head.safetensors"  # the head's weights in final/ and lean directories


@dataclass
class DualHeadOutput(ModelOutput):
    """A ModelOutput, so DeepSpeed's ZeRO-3 hooks know how to walk it."""

    hidden: torch.Tensor | None = None      # [B, T, H] final-norm hidden states (the LM head's input)
    cls_logits: torch.Tensor | None = None  # [S, C] one row per packed segment


class ClassificationHead(nn.Module):
    """The paper's 2-layer MLP on the pooled hidden state."""

    def __init__(self, hidden_size: int, num_labels: int, inner_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        inner_size = inner_size or hidden_size
        self.dense = nn.Linear(hidden_size, inner_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(inner_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.act(self.dense(pooled))))


class LinearHead(nn.Module):
    """One projection of the pooled state, no bias: exactly the ``score`` layer of a
    Hugging Face ``<Arch>ForSequenceClassification``, so the classifier exports to that
    standard class (dhrd export --format hf)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


def make_head(kind: str, hidden_size: int, num_labels: int, inner_size: int | None = None,
              dropout: float = 0.0) -> nn.Module:
    """The classification head by name: ``mlp`` (the paper's) or ``linear``."""
    if kind == "mlp":
        return ClassificationHead(hidden_size, num_labels, inner_size, dropout)
    if kind == "linear":
        return LinearHead(hidden_size, num_labels, dropout)
    raise ValueError(f"unknown head {kind!r}; expected one of {HEADS}")


def head_kind(head: nn.Module) -> str:
    return "linear" if isinstance(head, LinearHead) else "mlp"


def head_inner_size(head: nn.Module) -> int:
    """The MLP's inner width (0 for the linear head), as export metadata records it."""
    return head.dense.out_features if isinstance(head, ClassificationHead) else 0


def pool_hidden(hidden: torch.Tensor, cls_index: torch.Tensor, cls_start: torch.Tensor | None,
                pooling: str) -> torch.Tensor:
    """Pool each segment of a packed batch: its last input token (``last``) or the mean
    over its input tokens ``[cls_start, cls_index]`` (``mean``); indices are flat in B*T."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if pooling == "last":
        return flat.index_select(0, cls_index)
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if cls_start is None:
        raise ValueError("mean pooling needs cls_start (the first input token of each segment)")
    lengths = cls_index - cls_start + 1
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device), lengths)
    offsets = torch.arange(len(seg), device=flat.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    rows = torch.repeat_interleave(cls_start, lengths) + offsets
    sums = torch.zeros(len(lengths), flat.shape[-1], dtype=torch.float32, device=flat.device)
    sums.index_add_(0, seg, flat.index_select(0, rows).float())
    return (sums / lengths[:, None].float()).to(flat.dtype)


class DualHeadModel(nn.Module):
    """A decoder trained as a classifier (pooled head) with its LM head kept as the
    reasoning head for training. Works with any ``AutoModelForCausalLM`` whose base model
    accepts ``position_ids`` (packed segments are isolated by restarting position ids).

    ``choice``: the multiple-choice formulation; the head gives one score per pooled
    segment (an answer option) and ``forward`` arranges them per question (choice_scores)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "last",
                 head_inner_size: int | None = None, head_dropout: float = 0.0, head: str = "linear",
                 choice: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.backbone = backbone
        self.pooling = pooling
        self.choice, self._num_labels = choice, num_labels
        cfg = self.config
        hidden_size = getattr(cfg, "hidden_size", None) or cfg.n_embd
        self.head = make_head(head, hidden_size, 1 if choice else num_labels, head_inner_size, head_dropout)
        dtype = next(backbone.parameters()).dtype
        if dtype.is_floating_point:
            self.head.to(dtype)

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_labels(self) -> int:
        """The task's labels (a choice model: its options, each scored by one output)."""
        return self._num_labels

    @property
    def decoder(self) -> nn.Module:
        """The transformer body without the LM head (``model`` for Llama, ``transformer``
        for GPT-2), found through the standard ``base_model_prefix``; see through peft."""
        model = self.backbone
        if hasattr(model, "get_base_model"):  # peft PeftModel
            model = model.get_base_model()
        return getattr(model, model.base_model_prefix)

    @property
    def lm_head(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    @property
    def lm_weight(self) -> torch.Tensor:
        return self.lm_head.weight

    @property
    def lm_bias(self) -> torch.Tensor | None:
        return getattr(self.lm_head, "bias", None)

    @property
    def logit_softcap(self) -> float | None:
        """Gemma-style final logit soft-capping, which the LM loss must apply too."""
        cfg = getattr(self.config, "get_text_config", lambda: self.config)()
        return getattr(cfg, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                cls_index: torch.Tensor, cls_start: torch.Tensor | None = None,
                choice_index: torch.Tensor | None = None, **_ignored) -> DualHeadOutput:
        """input_ids/position_ids [B, T] (positions restart at 0 per packed segment, no
        attention mask); cls_index [S] flat index of each segment's pooled token;
        choice_index [Q, K] (choice models): each question's option segments, -1 padding;
        then cls_logits is [Q, K], one score per option."""
        out = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state
        pooled = pool_hidden(hidden, cls_index, cls_start, self.pooling)
        logits = self.head(pooled.to(self.head.out.weight.dtype))
        if choice_index is not None:
            logits = choice_scores(logits, choice_index)
        return DualHeadOutput(hidden=hidden, cls_logits=logits)


def choice_scores(scores: torch.Tensor, choice_index: torch.Tensor) -> torch.Tensor:
    """[S, 1] option scores -> [Q, K] per question, -inf where a question has fewer than
    K options (softmax and cross-entropy then give those no weight)."""
    if scores.shape[-1] != 1:
        raise ValueError(f"choice scoring needs one score per option, the head gives {scores.shape[-1]}")
    flat = scores[:, 0]
    picked = flat.index_select(0, choice_index.clamp(min=0).reshape(-1)).reshape(choice_index.shape)
    return picked.masked_fill(choice_index < 0, float("-inf"))


def _gathered(params, modifier_rank: int = 0):
    """Full parameters for in-place edits under ZeRO-3; a no-op for ordinary tensors."""
    params = [p for p in params if p is not None]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
    return contextlib.nullcontext()


class SpecialTokens(NamedTuple):
    """The ids of ``<REASON>`` and ``<ANS>``; a tuple, so it is stored as ``[reason, answer]``."""

    reason: int
    answer: int


def register_reasoning_tokens(tokenizer) -> tuple[SpecialTokens, list[int]]:
    """Add ``<REASON>`` and ``<ANS>`` to the tokenizer as special tokens (idempotent: a
    saved DHRD tokenizer already has them). Returns their ids and the ids that are new,
    whose embedding rows ``init_reasoning_rows`` fills once the backbone is loaded: the
    data can be tokenised (and the steps planned) before the model exists."""
    from transformers import AddedToken

    missing = [t for t in (REASON_TOKEN, ANSWER_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    special = SpecialTokens(*(tokenizer.convert_tokens_to_ids(t) for t in (REASON_TOKEN, ANSWER_TOKEN)))
    return special, [tokenizer.convert_tokens_to_ids(t) for t in missing]


def init_reasoning_rows(backbone, n_vocab: int, new_ids: list[int]) -> None:
    """Size the embeddings for a tokenizer of ``n_vocab`` tokens and give each new row
    (input and, when untied, output) the mean of the existing ones, so the new tokens
    start as an "average" token instead of noise."""
    if not new_ids:
        return
    first_new = min(new_ids)
    emb = backbone.get_input_embeddings()
    if n_vocab > emb.num_embeddings:
        backbone.resize_token_embeddings(n_vocab, mean_resizing=False)
    rows = torch.tensor(new_ids)
    tables = [backbone.get_input_embeddings().weight]
    out_emb = backbone.get_output_embeddings()
    if out_emb is not None and out_emb.weight is not tables[0]:
        tables.append(out_emb.weight)
    with _gathered(tables), torch.no_grad():
        for w in tables:
            if w.numel():  # under ZeRO-3 only the modifier rank holds the data
                w[rows] = w[:first_new].float().mean(0).to(w.dtype)


def add_reasoning_tokens(tokenizer, backbone) -> SpecialTokens:
    """Both steps at once (``register_reasoning_tokens``, ``init_reasoning_rows``): the
    tokens added, the backbone's embeddings sized and their new rows initialised."""
    special, new_ids = register_reasoning_tokens(tokenizer)
    init_reasoning_rows(backbone, len(tokenizer), new_ids)
    return special
