"""The lean classifier directory: what serving needs and nothing of training.

* ``model.safetensors`` + ``config.json``: the base decoder (``AutoModel``, e.g.
  ``LlamaModel``), LoRA merged in. An untied LM head is simply not part of it; a tied
  one lives on as the input embeddings, which the decoder needs anyway;
* ``classifier_head.safetensors``; the tokenizer files with ``<REASON>``/``<ANS>``;
* ``lean_config.json`` (:class:`LeanConfig`): task, labels, verbalizers, pooling, head,
  max_input_len (inference must tokenise x exactly as training did), dtype, the int8
  flag, the formulation and the training metadata.

A ``choice`` (multiple-choice) directory's head gives one score per answer option; it is
written as version 2, so a reader that predates the formulation refuses it instead of
misreading it. There is no standard Hugging Face class for it (transformers'
``*ForMultipleChoice`` are encoders): the lean format is its only export.

Written by ``dhrd.export.lean``; read by ``dhrd.serve.classifier``."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..fileio import atomic_write_json, read_json
from ..model.dual_head import HEADS

LEAN_FORMAT = "dhrd-lean-classifier"


LEAN_VERSION = 2  # the newest version this code reads; classify directories are still written as 1
FORMULATIONS = ("classify", "choice")


LEAN_CONFIG = "lean_config.json"


WEIGHTS = "model.safetensors"


DTYPES = ("float32", "bfloat16", "float16")


QUANTIZE = ("none", "int8")


@dataclass
class LeanConfig:
    task: str
    labels: list[str]
    verbalizers: list[str]
    pooling: str
    max_input_len: int
    num_labels: int
    head_inner_size: int               # the MLP's inner width; 0 for the linear head
    dtype: str = "float32"
    quantize: str = "none"            # "int8": the decoder's Linear weights are stored int8
    tied_embeddings: bool = False     # the (dropped) LM head shared the input embeddings
    special_token_ids: dict = field(default_factory=dict)  # {"reason": id, "answer": id}
    head: str = "mlp"                 # "mlp" (the paper's) or "linear" (written before v1.1: mlp)
    training: dict = field(default_factory=dict)  # alpha, beta, method, lora_merged, source, step, eval
    formulation: str = "classify"     # "choice": one score per option (labels name the options)
    format: str = LEAN_FORMAT
    version: int = 1

    @property
    def head_outputs(self) -> int:
        return 1 if self.formulation == "choice" else self.num_labels

    def __post_init__(self):
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation={self.formulation!r} is not one of {', '.join(FORMULATIONS)}")
        self.version = max(self.version, 2 if self.formulation == "choice" else 1)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize={self.quantize!r} is not one of {', '.join(QUANTIZE)}")
        if self.quantize == "int8" and self.dtype != "float32":
            raise ValueError("int8 dynamic quantisation starts from float32 weights: use dtype float32")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not one of {', '.join(HEADS)}")
        if len(self.labels) != self.num_labels or len(self.verbalizers) != self.num_labels:
            raise ValueError(f"{self.num_labels} labels but labels={self.labels}, verbalizers={self.verbalizers}")

    def save(self, directory: str) -> None:
        atomic_write_json(os.path.join(directory, LEAN_CONFIG), asdict(self), indent=2)

    @classmethod
    def load(cls, directory: str) -> "LeanConfig":
        path = os.path.join(directory, LEAN_CONFIG)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} is not a lean classifier directory: no {LEAN_CONFIG} "
                                    "(export one with dhrd export)")
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        if raw.get("format") != LEAN_FORMAT or raw.get("version", 0) > LEAN_VERSION:
            raise ValueError(f"{path}: format {raw.get('format')!r} version {raw.get('version')} "
                             f"is not {LEAN_FORMAT!r} <= {LEAN_VERSION}")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
        types = {"task": str, "labels": list, "verbalizers": list, "pooling": str, "max_input_len": int,
                 "num_labels": int, "head_inner_size": int, "dtype": str, "quantize": str, "tied_embeddings": bool,
                 "special_token_ids": dict, "training": dict, "head": str, "formulation": str}
        for name, kind in types.items():
            value = raw.get(name)
            if name in raw and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"{path}: field '{name}': expected {kind.__name__}, got {type(value).__name__}")
        for name in ("labels", "verbalizers"):
            if not all(isinstance(v, str) for v in raw[name]):
                raise ValueError(f"{path}: field '{name}': expected a list of strings")
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# weight files that unpickle (and so can run code) when loaded: never loaded by serving
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def refuse_pickled_weights(directory: str) -> None:
    """A model directory whose weights are pickled (``pytorch_model.bin``) instead of
    safetensors is refused by name, before anything could unpickle them."""
    if os.path.isfile(os.path.join(directory, WEIGHTS)) or not os.path.isdir(directory):
        return
    shards = [n for n in os.listdir(directory) if n.endswith(".safetensors") and n != "classifier_head.safetensors"]
    pickled = sorted(n for n in os.listdir(directory) if n.endswith(PICKLED))
    if pickled and not shards:
        raise ValueError(f"{os.path.join(directory, pickled[0])}: pickled weights are refused (unpickling can run "
                         f"code); serving loads {WEIGHTS} only: re-save with save_pretrained(safe_serialization=True)")


def check_weights_fit_config(directory: str) -> None:
    """Every tensor in ``model.safetensors`` has the shape ``config.json`` gives it (read
    from the file's header and a model built on the meta device): a mismatch is one line
    naming both files and the first tensor, not transformers' load report and traceback."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    from ..model.backbones import NO_REMOTE_CODE

    weights = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(weights):
        return  # sharded or absent: from_pretrained names what is missing
    with safe_open(weights, "pt") as f:
        stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(directory, **NO_REMOTE_CODE))
    for name, tensor in model.state_dict().items():
        if name in stored and stored[name] != list(tensor.shape):
            raise ValueError(f"{os.path.join(directory, 'config.json')}: disagrees with {weights}: {name} is "
                             f"{stored[name]} in the weights but {list(tensor.shape)} by the config")
