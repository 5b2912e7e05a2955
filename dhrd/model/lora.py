"""LoRA (peft) on the backbone, and its merge back into plain weights for export."""

from __future__ import annotations


def apply_lora(backbone, model_args):
    """peft LoRA adapters on the attention and MLP projections; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                     lora_dropout=model_args.lora_dropout, bias="none",
                     target_modules=[t.strip() for t in model_args.lora_targets.split(",") if t.strip()])
    return get_peft_model(backbone, cfg)


def merged_backbone(fresh, lora: bool):
    """The causal LM with LoRA adapters folded into the base weights (peft's merge)."""
    return fresh.backbone.merge_and_unload() if lora else fresh.backbone
