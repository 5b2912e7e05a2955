"""Shared test helpers: a tiny byte-level BPE tokenizer trained on the spot and tiny
randomly initialised decoders of each supported architecture, all offline."""

from __future__ import annotations

import importlib.util
import os
import string
import sys

import torch

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gpt2")
TINY_VOCAB = 320


def make_tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """A real fast tokenizer (byte-level BPE, BOS prepended like Llama's) trained in
    milliseconds, so tests need no hub and no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the premise entails the hypothesis. answer yes or no. question passage "
              "because so therefore true false entailment contradiction neutral " * 4,
              string.printable]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(arch: str, vocab_size: int = TINY_VOCAB, **overrides):
    """A 2-layer, 32-wide config of the given architecture (GQA where it has it)."""
    from transformers import AutoConfig

    if arch == "gpt2":
        kw = dict(n_embd=32, n_layer=2, n_head=4, n_positions=512)
    else:
        kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        if arch in ("qwen3", "gemma3_text"):
            kw["head_dim"] = 8
        if arch == "gemma3_text":
            kw["sliding_window"] = 16
    kw.update(vocab_size=vocab_size, bos_token_id=1, eos_token_id=0, pad_token_id=0)
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


def tiny_backbone(arch: str = "llama", attn: str = "sdpa", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    from dhrd.model.segment_attention import resolve

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides),
                                            attn_implementation=resolve(attn)).eval()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is a folder of scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
