"""Export the lean classifier (``dhrd.serve.lean_format``) from a training output: a ZeRO
checkpoint of any step (consolidated offline with DeepSpeed's ``zero_to_fp32``, no
distributed job) or final/. With ``quantize="int8"`` the decoder's Linear weights are
stored int8 (``dhrd.serve.int8``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..engine import checkpoint
from ..model.backbones import NO_REMOTE_CODE
from ..model.dual_head import HEAD_FILE, SpecialTokens, head_inner_size, head_kind
from ..serve.int8 import INT8_SCHEME, int8_tensors, quantize_int8
from ..serve.lean_format import WEIGHTS, LeanConfig


class CheckpointError(RuntimeError):
    """A training output or checkpoint that cannot be exported; the message names what."""


@dataclass
class Source:
    """Where the weights come from: ``kind`` is "zero" (checkpoints/<tag>) or "final"."""

    kind: str
    output_dir: str
    tag: str
    path: str                  # the tag directory or final/
    train_config: dict | None  # <output_dir>/config.json


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{what} is unreadable: {path}: {e}") from None


def resolve_source(path: str, tag: str | None = None) -> Source:
    """Accepts a training output dir (``tag``: None = final/ if present else the newest
    complete checkpoint, ``final``, ``latest`` or ``step_N``), a ``checkpoints/<tag>``
    directory, or a ``final/`` directory (the last two fix the tag themselves)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"training output not found: {path}")
    if os.path.isfile(os.path.join(path, "dhrd_config.json")):     # final/
        out, tag = os.path.dirname(path), "final"
    elif os.path.basename(os.path.dirname(path)) == "checkpoints":  # checkpoints/<tag>
        out, tag = os.path.dirname(os.path.dirname(path)), os.path.basename(path)
    else:
        out = path
    root = os.path.join(out, "checkpoints")
    if tag is None:
        tag = "final" if os.path.isfile(os.path.join(out, "final", "dhrd_config.json")) else \
            checkpoint.find_resumable(root)
        if tag is None:
            raise CheckpointError(f"{out} holds neither final/ nor a complete checkpoint under {root}")
    elif tag == "latest":
        tag = checkpoint.find_resumable(root)
        if tag is None:
            raise CheckpointError(f"no complete checkpoint under {root}")
    cfg_path = os.path.join(out, "config.json")
    if tag == "final":
        final = os.path.join(out, "final")
        _read_json(os.path.join(final, "dhrd_config.json"), "final/ export metadata")
        cfg = _read_json(cfg_path, "training config") if os.path.exists(cfg_path) else None
        return Source("final", out, tag, final, cfg)
    cfg = _read_json(cfg_path, "training config (needed to rebuild the architecture)")
    for section in ("model", "data", "loss"):
        if not isinstance(cfg.get(section), dict):
            raise CheckpointError(f"training config {cfg_path} has no {section!r} section")
    return Source("zero", out, tag, os.path.join(root, tag), cfg)


def source_formulation(source: Source) -> str:
    """classify or choice, from the source's metadata alone (before any weights load)."""
    if source.kind == "final":
        return _read_json(os.path.join(source.path, "dhrd_config.json"), "final/ export metadata").get(
            "formulation", "classify")
    return source.train_config["data"].get("formulation", "classify")


def _torch_archive_problem(path: str) -> str | None:
    """Why ``path`` is not a complete torch.save archive (a zip whose central directory
    sits at the end, so truncation is caught without reading the tensors), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            size = os.path.getsize(path)
            end = max(i.header_offset + i.compress_size for i in z.infolist())
            if end > size:
                return f"truncated ({size} bytes, entries reach {end})"
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"truncated or corrupt ({e})"
    return None


def check_zero_checkpoint(tag_dir: str) -> dict:
    """Raise CheckpointError listing every problem of a DeepSpeed checkpoint directory:
    not complete (no marker), a rank's model or optimizer shard missing, or a shard that
    is not a complete archive. Returns its completion marker (world size, ZeRO stage)."""
    if not os.path.isdir(tag_dir):
        raise CheckpointError(f"checkpoint directory not found: {tag_dir}")
    marker = os.path.join(tag_dir, checkpoint.MARKER)
    if not os.path.isfile(marker):
        raise CheckpointError(f"checkpoint {tag_dir} is incomplete: no {checkpoint.MARKER} "
                              "(the save was interrupted)")
    info = _read_json(marker, "checkpoint marker")
    world = int(info.get("world_size", 0))
    names = os.listdir(tag_dir)
    problems = []
    if info.get("zero_stage") == 0:  # no ZeRO: model and optimizer states in one file
        wanted = [("mp_rank_00_model_states.pt", " (the model and optimizer states)")]
    else:  # ZeRO-3 writes a model-state file per rank; ZeRO-1/2 one (rank 0's); both one optimizer shard per rank
        per_rank = ("model", "optim") if any("zero_pp_rank_" in n and n.endswith("_model_states.pt") for n in names) \
            else ("optim",)
        wanted = [(f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt", f" (rank {rank} of {world})")
                  for rank in range(world) for kind in per_rank]
        if per_rank == ("optim",):
            wanted.insert(0, ("mp_rank_00_model_states.pt", " (the model states)"))
    for suffix, who in wanted:
        found = [n for n in names if n.endswith(suffix)]
        if not found:
            problems.append(f"missing {suffix}{who}")
            continue
        why = _torch_archive_problem(os.path.join(tag_dir, found[0]))
        if why:
            problems.append(f"{found[0]}: {why}")
    if problems:
        raise CheckpointError(f"checkpoint {tag_dir} is damaged: " + "; ".join(problems))
    return info


def zero_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """The fp32 weights of a checkpoint: consolidated offline from ZeRO shards, or the
    module state of a stage-0 checkpoint (checkpoint directories are trusted: pickles)."""
    marker = check_zero_checkpoint(source.path)
    try:
        if marker.get("zero_stage") == 0:
            state = torch.load(os.path.join(source.path, "mp_rank_00_model_states.pt"), map_location="cpu",
                               weights_only=False)
            return {k: v.float() for k, v in state["module"].items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):  # it prints progress
            return get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(source.path), source.tag)
    except Exception as e:  # noqa: BLE001 - re-raised with the checkpoint named
        raise CheckpointError(f"could not consolidate checkpoint {source.path}: {type(e).__name__}: {e}") from e


def model_args_of(train_config: dict):
    from ..config import ModelArgs

    known = {f.name for f in fields(ModelArgs)}
    return ModelArgs(**{k: v for k, v in train_config["model"].items() if k in known})


def dual_head_from_checkpoint(source: Source):
    """(DualHeadModel with the checkpoint's fp32 weights, LoRA unmerged; tokenizer) - the
    in-training classifier, rebuilt from the training config and the base model."""
    from transformers import AutoConfig

    from ..data.tasks import get_task
    from ..engine.final import load_trained_state
    from ..model.backbones import load_tokenizer, resolve_model_path
    from ..model.builder import dual_head_from_config

    check_zero_checkpoint(source.path)  # before any slow loading
    cfg = source.train_config
    margs = model_args_of(cfg)
    base = resolve_model_path(margs.model)
    if not base or (not os.path.exists(base) and os.sep in base):
        raise CheckpointError(f"base model {base} (model.model in {source.output_dir}/config.json) not found: "
                              "its config and tokenizer are needed to rebuild the architecture")
    tokenizer = load_tokenizer(base, margs.gguf_file)
    hf_config = AutoConfig.from_pretrained(base, gguf_file=margs.gguf_file, **NO_REMOTE_CODE)
    num_labels = len(get_task(cfg["data"]["task"]).labels)
    model = dual_head_from_config(hf_config, num_labels, margs, margs.pooling, tokenizer=tokenizer,
                                  formulation=cfg["data"].get("formulation", "classify"))
    want = cfg.get("derived", {}).get("special_token_ids")
    got = [tokenizer.convert_tokens_to_ids(t) for t in ("<REASON>", "<ANS>")]
    if want is not None and list(want) != got:
        raise CheckpointError(f"the base tokenizer gives <REASON>/<ANS> ids {got}, training used {want}")
    try:
        load_trained_state(model, zero_state_dict(source))
    except RuntimeError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {source.path}: {e}") from e
    return model.eval(), tokenizer


def dual_head_from_final(source: Source):
    """(DualHeadModel, tokenizer) from a final/ export (LoRA already merged)."""
    from ..model.builder import dual_head_from_final as build

    meta = _read_json(os.path.join(source.path, "dhrd_config.json"), "final/ export metadata")
    head_path = os.path.join(source.path, meta.get("head_file", HEAD_FILE))
    if not os.path.isfile(head_path):
        raise CheckpointError(f"classifier head not found: {head_path}")
    return build(source.path, meta, head_path)

def training_meta(source: Source) -> dict:
    """alpha/beta/method from the training config (or final/'s metadata), and the eval
    metrics of the exported step when eval_results.json has them."""
    cfg = source.train_config or {}
    final_meta = {}
    if source.kind == "final":
        final_meta = _read_json(os.path.join(source.path, "dhrd_config.json"), "final/ export metadata")
    loss, data = cfg.get("loss", {}), cfg.get("data", {})
    step = None
    if source.kind == "zero":
        step = _read_json(os.path.join(source.path, checkpoint.MARKER), "checkpoint marker").get("step")
    meta = {"source": os.path.abspath(source.path), "tag": source.tag, "step": step,
            "alpha": loss.get("alpha", final_meta.get("alpha")), "beta": loss.get("beta", final_meta.get("beta")),
            "method": loss.get("method", final_meta.get("method")),
            "rationale_mode": data.get("rationale_mode", final_meta.get("rationale_mode")),
            "lora_merged": bool(cfg.get("model", {}).get("lora", final_meta.get("lora_merged", False))),
            "backbone": cfg.get("model", {}).get("model")}
    ev_path = os.path.join(source.output_dir, "eval_results.json")
    if os.path.isfile(ev_path):
        ev = _read_json(ev_path, "eval results")
        if source.kind == "final" or step == ev.get("step"):
            meta["eval"] = {"step": ev.get("step"), "metrics": ev.get("metrics")}
        else:
            at = [h for h in ev.get("history", []) if h.get("step") == step]
            if at:
                meta["eval"] = {"step": step, "metrics": {k: v for k, v in at[0].items() if k != "step"}}
    return meta


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@dataclass
class ExportReport:
    source: str
    out_dir: str
    source_bytes: int       # the checkpoint tag dir (shards incl. optimizer state) or final/
    dual_head_bytes: int    # every dual-head parameter at the export dtype (LM head included)
    lean_bytes: int         # the lean directory

    def format(self) -> str:
        mb = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
        return (f"source {self.source}: {mb(self.source_bytes)} on disk; dual-head weights "
                f"{mb(self.dual_head_bytes)}\nlean classifier {self.out_dir}: {mb(self.lean_bytes)} "
                f"({self.lean_bytes / max(self.dual_head_bytes, 1):.1%} of the dual-head weights)")


def write_lean(model, tokenizer, cfg: LeanConfig, out_dir: str, lora: bool = False) -> None:
    """Save the decoder body (LoRA merged; int8 Linear weights when ``cfg.quantize``),
    the head, the tokenizer and ``cfg``."""
    from ..engine.final import save_head
    from ..model.lora import merged_backbone

    os.makedirs(out_dir, exist_ok=True)
    dtype = getattr(torch, cfg.dtype)
    backbone = merged_backbone(model, lora)
    decoder = getattr(backbone, backbone.base_model_prefix).to(dtype)
    decoder.config.dtype = dtype
    if cfg.quantize == "int8":
        from safetensors.torch import save_file

        save_file(int8_tensors(quantize_int8(decoder)), os.path.join(out_dir, WEIGHTS),
                  metadata={"format": "pt", "dhrd_quantization": INT8_SCHEME})
        decoder.config.save_pretrained(out_dir)
    else:
        decoder.save_pretrained(out_dir)
    save_head(model.head.to(dtype), os.path.join(out_dir, HEAD_FILE))
    tokenizer.save_pretrained(out_dir)
    cfg.save(out_dir)


@dataclass
class Trained:
    """A trained classifier rebuilt from a training output, with what an export records."""

    source: Source
    model: nn.Module        # DualHeadModel (LoRA unmerged when trained with it)
    tokenizer: object
    task: object            # dhrd.data.tasks.Task
    max_input_len: int
    special: dict           # {"reason": id, "answer": id}
    lora: bool

    @property
    def formulation(self) -> str:
        return "choice" if self.model.choice else "classify"

    @property
    def tied(self) -> bool:
        return self.model.lm_weight is self.model.backbone.get_input_embeddings().weight

    def dual_head_bytes(self, dtype: str) -> int:
        itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" not in n) * itemsize


def load_trained(path: str, tag: str | None = None) -> Trained:
    """A training output (ZeRO checkpoint or final/, see :func:`resolve_source`) rebuilt."""
    from ..data.tasks import get_task

    source = resolve_source(path, tag)
    if source.kind == "zero":
        model, tokenizer = dual_head_from_checkpoint(source)
        cfg = source.train_config
        task = get_task(cfg["data"]["task"])
        max_input_len = cfg["data"]["max_input_len"]
        special = SpecialTokens(*cfg["derived"]["special_token_ids"])._asdict()
    else:
        model, tokenizer = dual_head_from_final(source)
        meta = _read_json(os.path.join(source.path, "dhrd_config.json"), "final/ export metadata")
        task = get_task(meta["task"])
        max_input_len, special = meta["max_input_len"], meta["special_token_ids"]
    lora = source.kind == "zero" and model_args_of(source.train_config).lora
    return Trained(source, model, tokenizer, task, max_input_len, special, bool(lora))


def export_lean(path: str, out_dir: str, *, tag: str | None = None, dtype: str = "float32",
                quantize: str = "none") -> ExportReport:
    """A training output (ZeRO checkpoint or final/) -> a lean classifier directory."""
    t = load_trained(path, tag)
    model, task = t.model, t.task
    lean_cfg = LeanConfig(task=task.name, labels=list(task.labels), verbalizers=list(task.verbalizers),
                          pooling=model.pooling, max_input_len=t.max_input_len, num_labels=model.num_labels,
                          head_inner_size=head_inner_size(model.head), head=head_kind(model.head),
                          dtype=dtype, quantize=quantize,
                          tied_embeddings=t.tied, special_token_ids=t.special, training=training_meta(t.source),
                          formulation=t.formulation)
    write_lean(model, t.tokenizer, lean_cfg, out_dir, lora=t.lora)
    return ExportReport(t.source.path, out_dir, dir_bytes(t.source.path), t.dual_head_bytes(dtype), dir_bytes(out_dir))


def export_untrained(model: str, out_dir: str, *, task: str = "rte", head: str = "mlp", dtype: str = "float32",
                     max_input_len: int = 512, seed: int = 0) -> ExportReport:
    """A lean directory from a pretrained decoder (``smollm2``, a HF directory) with a
    randomly initialised head and no training: the real shape and speed of a served
    classifier, for load tests and benchmarks (its predictions mean nothing)."""
    from ..data.tasks import get_task
    from ..model.backbones import load_backbone, load_tokenizer, resolve_model_path
    from ..model.dual_head import DualHeadModel

    path = resolve_model_path(model)
    spec = get_task(task)
    torch.manual_seed(seed)
    dual = DualHeadModel(load_backbone(path, dtype=getattr(torch, dtype), attn_implementation="sdpa"),
                         len(spec.labels), head=head)
    cfg = LeanConfig(task=spec.name, labels=list(spec.labels), verbalizers=list(spec.verbalizers), pooling="last",
                     max_input_len=max_input_len, num_labels=len(spec.labels),
                     head_inner_size=head_inner_size(dual.head), head=head_kind(dual.head), dtype=dtype,
                     training={"method": "untrained", "source": path, "seed": seed})
    write_lean(dual, load_tokenizer(path), cfg, out_dir)
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return ExportReport(path, out_dir, dir_bytes(path), sum(p.numel() for p in dual.parameters()) * itemsize,
                        dir_bytes(out_dir))
