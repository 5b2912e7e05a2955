"""The one place a ``DualHeadModel`` is built: for training (from a pretrained backbone,
ZeRO-3 aware), for export (an unpartitioned model of the trained architecture from its
config, ready for a consolidated state dict), from a final/ directory, and for tools.
Serving builds no DualHeadModel (only the decoder and the head: dhrd.serve.classifier)."""

from __future__ import annotations

import contextlib
import os

import torch

from .backbones import (
    NO_REMOTE_CODE,
    load_backbone,
    load_tokenizer,
    refuse_remote_code,
    resolve_dtype,
    resolve_model_path,
)
from .dual_head import DualHeadModel, add_reasoning_tokens, init_reasoning_rows, register_reasoning_tokens
from .lora import apply_lora
from .segment_attention import resolve


def dual_head(backbone, num_labels: int, settings, *, pooling: str | None = None,
              formulation: str = "classify") -> DualHeadModel:
    """The head on ``backbone`` as ``settings`` (ModelArgs, or anything with its head
    fields) say; ``pooling`` overrides theirs; ``formulation`` choice scores options."""
    return DualHeadModel(backbone, num_labels, pooling=pooling or settings.pooling,
                         head_inner_size=getattr(settings, "head_inner_size", None) or None,
                         head_dropout=getattr(settings, "head_dropout", 0.0), head=getattr(settings, "head", "linear"),
                         choice=formulation == "choice")


def training_tokenizer(model_args):
    """The backbone's tokenizer with the reasoning tokens, and its config, before the model
    loads: the data is tokenised and the steps planned first, so the DeepSpeed config
    (batch sizes, bucket sizes from the hidden size) is filled once, before zero.Init.
    Returns (tokenizer, SpecialTokens, the new token ids, config)."""
    from transformers import AutoConfig

    path = resolve_model_path(model_args.model)
    if not os.path.exists(path) and (os.path.sep in path or path.startswith(".")):
        raise FileNotFoundError(f"model directory not found: {path}")
    tokenizer = load_tokenizer(path, model_args.gguf_file)
    special, new_ids = register_reasoning_tokens(tokenizer)
    config = AutoConfig.from_pretrained(path, gguf_file=model_args.gguf_file, **NO_REMOTE_CODE)
    return tokenizer, special, new_ids, config


def build_model(model_args, num_labels: int, ds_cfg: dict, *, tokenizer, new_token_ids: list[int], zero3: bool,
                formulation: str = "classify"):
    """Backbone (its embeddings sized for ``tokenizer``, from ``training_tokenizer``) +
    (LoRA) + head. Under ZeRO-3 (``zero3``: the caller reads the stage from ``ds_cfg``) the
    backbone is loaded under ``HfDeepSpeedConfig`` (which must stay alive: it is returned)
    and the head is built under ``zero.Init``, so no rank ever holds the full model.
    Returns (DualHeadModel, the HfDeepSpeedConfig or None)."""
    hf_ds = None
    init_ctx = contextlib.nullcontext()
    if zero3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_cfg)
        init_ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg)
    path = resolve_model_path(model_args.model)
    dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else resolve_dtype(model_args.dtype, "cpu")
    backbone = load_backbone(path, dtype=dtype, attn_implementation=model_args.attn_implementation,
                             gguf_file=model_args.gguf_file)
    init_reasoning_rows(backbone, len(tokenizer), new_token_ids)
    if model_args.lora:
        backbone = apply_lora(backbone, model_args)
    with init_ctx:
        model = dual_head(backbone, num_labels, model_args, formulation=formulation)
    return model, hf_ds


def build_dual_head_model(args, num_labels: int, device=None):
    """Backbone + tokenizer from ModelArgs, reasoning tokens added, head attached, no
    DeepSpeed (tools, tests). Returns (DualHeadModel, tokenizer, SpecialTokens)."""
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path, args.gguf_file)
    backbone = load_backbone(path, dtype=resolve_dtype(args.dtype, device),
                             attn_implementation=args.attn_implementation, gguf_file=args.gguf_file)
    special = add_reasoning_tokens(tokenizer, backbone)
    return dual_head(backbone, num_labels, args), tokenizer, special


def dual_head_from_config(config, num_labels: int, model_args, pooling: str, tokenizer=None,
                          formulation: str = "classify"):
    """An unpartitioned, untrained DualHeadModel of the trained architecture (HF's ZeRO-3
    hook switched off, LoRA adapters in place when trained with them), ready to take a
    consolidated state dict. With ``tokenizer`` (a base tokenizer) the reasoning tokens
    are added as in training, which also sizes the embeddings as training did."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    hf_deepspeed.unset_hf_deepspeed_config()
    backbone = AutoModelForCausalLM.from_config(config, attn_implementation=resolve(model_args.attn_implementation))
    if tokenizer is not None:
        add_reasoning_tokens(tokenizer, backbone)
    if model_args.lora:
        backbone = apply_lora(backbone, model_args)
    return dual_head(backbone, num_labels, model_args, pooling=pooling, formulation=formulation)


class _FinalHead:
    """The head settings a final/ directory's dhrd_config.json records."""

    def __init__(self, meta: dict):
        self.pooling, self.head = meta["pooling"], meta.get("head", "mlp")
        self.head_inner_size, self.head_dropout = meta.get("head_inner_size") or None, 0.0


def dual_head_from_final(path: str, meta: dict, head_path: str):
    """(DualHeadModel, tokenizer) of a final/ export (LoRA already merged); ``meta`` is
    its dhrd_config.json."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_remote_code(path)
    backbone = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, meta["dtype"]), **NO_REMOTE_CODE)
    model = dual_head(backbone, meta["num_labels"], _FinalHead(meta), formulation=meta.get("formulation", "classify"))
    model.head.load_state_dict(load_file(head_path))
    return model.eval(), AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
