"""The end-of-training export to ``<output_dir>/final`` (part of training: the trainer
writes it): consolidated weights as a plain HF backbone directory (LoRA merged in) +
tokenizer + ``classifier_head.safetensors`` + ``dhrd_config.json``, loadable without
DeepSpeed or peft.

DeepSpeed consolidates the (possibly ZeRO-3 partitioned) weights with
``save_16bit_model`` (every rank takes part; it writes the model's dtype: fp32 on CPU,
bf16 where bf16 trains); rank 0 then loads them into a fresh, unpartitioned model."""

from __future__ import annotations

import os
import shutil

import torch

from ..fileio import atomic_write_json
from ..model.builder import dual_head_from_config
from ..model.dual_head import HEAD_FILE, head_inner_size, head_kind
from ..model.lora import merged_backbone

CONSOLIDATED = "dual_head_consolidated.pt"


def export_final(engine, model, tokenizer, special, task, model_args, data_args, loss_args, out_dir: str,
                 dist) -> None:
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".consolidating")
    if not engine.save_16bit_model(tmp, CONSOLIDATED):
        raise RuntimeError("DeepSpeed did not consolidate the weights: set "
                           "zero_optimization.stage3_gather_16bit_weights_on_model_save true in the DeepSpeed config")
    dist.barrier()
    if dist.rank == 0:
        state = torch.load(os.path.join(tmp, CONSOLIDATED), map_location="cpu", weights_only=True)
        _write_final(state, model, tokenizer, special, task, model_args, data_args, loss_args, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()


def load_trained_state(fresh, state: dict) -> None:
    """Load the state dict of the module DeepSpeed wrapped (keys ``model.backbone...``,
    ``model.head...``) into ``fresh`` in the weights' dtype. Only a tied LM head may be
    absent: anything else missing or unexpected means the architecture was rebuilt wrong."""
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not state:
        raise RuntimeError("the weights hold no 'model.' entries: not a DHRD training state")
    fresh.to(next(iter(state.values())).dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {n for n, p in fresh.named_parameters() if p is fresh.lm_weight} if \
        fresh.lm_weight is fresh.backbone.get_input_embeddings().weight else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"consolidated weights do not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def save_head(head, path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, path)


def _write_final(state, model, tokenizer, special, task, model_args, data_args, loss_args, out_dir):
    formulation = "choice" if model.choice else "classify"
    fresh = dual_head_from_config(model.config, model.num_labels, model_args, model.pooling, formulation=formulation)
    load_trained_state(fresh, state)
    dtype = next(fresh.parameters()).dtype
    backbone = merged_backbone(fresh, model_args.lora)
    backbone.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_head(fresh.head, os.path.join(out_dir, HEAD_FILE))
    meta = {"task": task.name, "labels": list(task.labels), "verbalizers": list(task.verbalizers),
            "pooling": fresh.pooling, "num_labels": fresh.num_labels, "formulation": formulation,
            "head": head_kind(fresh.head), "head_inner_size": head_inner_size(fresh.head), "head_file": HEAD_FILE,
            "special_token_ids": special._asdict(),
            "alpha": loss_args.alpha, "beta": loss_args.beta, "method": loss_args.method,
            "rationale_mode": data_args.rationale_mode, "lora_merged": bool(model_args.lora),
            "dtype": str(dtype).replace("torch.", ""), "max_input_len": data_args.max_input_len}
    atomic_write_json(os.path.join(out_dir, "dhrd_config.json"), meta, indent=2)
