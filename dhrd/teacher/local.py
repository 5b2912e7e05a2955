"""A local Hugging Face causal LM as the teacher: batched generation with left padding
over length-sorted batches, so a batch wastes little on padding and the longest (the
likeliest to run out of memory) go first.

One process per GPU: run ``dhrd rationales generate --shard i/n`` n times (or
``--shard auto`` under torchrun/srun); each process takes the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..config import split_gguf_model
from ..data.padding import pad_ids
from ..data.rationales import END_MARKER
from ..model.backbones import NO_REMOTE_CODE, refuse_remote_code, resolve_model_path
from . import Completion
from .prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class LocalTeacherConfig:
    model: str  # HF directory, hub name, "smollm2" (the packaged model), or a .gguf path
    gguf_file: str | None = None  # GGUF file name inside ``model`` (a directory)
    device: str = "auto"  # auto: cuda:$LOCAL_RANK when CUDA is there, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    batch_size: int = 8
    max_new_tokens: int = 500
    temperature: float = 0.1  # 0: greedy
    top_p: float = 0.7
    seed: int = 0
    stop_at_marker: bool = True  # stop a row once it wrote the end marker (saves tokens)
    chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one
    max_prompt_tokens: int | None = None  # longer prompts fail as 'prompt_too_long'
    threads: int | None = None  # CPU threads for torch (None: its default); on a shared, busy
    # machine 1 thread can be several times faster than oversubscribed OpenMP threads


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class LocalTeacher:
    def __init__(self, cfg: LocalTeacherConfig, model=None, tokenizer=None):
        """Loads ``cfg.model`` unless a model and tokenizer are handed in (tests, notebooks)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.model.endswith(".gguf") and not os.path.isfile(cfg.model):
            raise FileNotFoundError(f"--model {cfg.model}: no such GGUF file (--model takes the .gguf file, or "
                                    "its folder with --gguf_file)")
        path, gguf = split_gguf_model(resolve_model_path(cfg.model), cfg.gguf_file)  # the same rule as training
        self.name = f"hf:{os.path.basename(os.path.normpath(gguf or path))}"
        self.device = _device(cfg.device)
        refuse_remote_code(path)
        kw = {"gguf_file": gguf, **NO_REMOTE_CODE} if gguf else dict(NO_REMOTE_CODE)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, **kw)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg.dtype, self.device), **kw)
        self.model = model.to(self.device).eval()
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.use_chat = bool(getattr(tok, "chat_template", None)) if cfg.chat_template is None \
            else cfg.chat_template
        if self.use_chat and not getattr(tok, "chat_template", None):
            raise ValueError(f"{cfg.model}: the tokenizer has no chat template (use chat_template=False)")
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        self.eos_ids.discard(None)

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if self.use_chat:
            text = tok.apply_chat_template(prompt.messages(), add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt.text())["input_ids"]

    def generate(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, Completion]]:
        torch.manual_seed(self.cfg.seed)
        encoded = [self.encode(p) for p in prompts]
        limit = self.cfg.max_prompt_tokens
        order = []
        for i, ids in enumerate(encoded):
            if limit is not None and len(ids) > limit:
                yield i, Completion("", prompt_tokens=len(ids), error=f"prompt_too_long: {len(ids)} > {limit}")
            else:
                order.append(i)
        order.sort(key=lambda i: -len(encoded[i]))
        bs = self.cfg.batch_size
        for start in range(0, len(order), bs):
            yield from self._batch([(i, encoded[i]) for i in order[start:start + bs]])

    def _batch(self, items: list[tuple[int, list[int]]]) -> Iterator[tuple[int, Completion]]:
        """One padded generate call; on an error (out of memory above all) the batch is
        halved and retried, down to single prompts, which then fail alone."""
        try:
            outputs = self._generate([ids for _, ids in items])
        except (RuntimeError, ValueError) as e:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                log.warning("generation failed for one prompt: %s", e)
                i, ids = items[0]
                yield i, Completion("", prompt_tokens=len(ids), error=f"generation_error: {str(e)[:300]}")
                return
            log.warning("generation failed for a batch of %d (%s); splitting it", len(items), e)
            half = len(items) // 2
            yield from self._batch(items[:half])
            yield from self._batch(items[half:])
            return
        for (i, ids), out in zip(items, outputs):
            yield i, out

    def _generate(self, batch: list[list[int]]) -> list[Completion]:
        cfg, tok = self.cfg, self.tokenizer
        input_ids, mask = pad_ids(batch, tok.pad_token_id, side="left")  # every prompt ends at one column
        width = input_ids.shape[1]
        kw = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id,
                  eos_token_id=sorted(self.eos_ids))
        if cfg.temperature > 0:
            kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cfg.stop_at_marker:
            kw.update(stop_strings=[END_MARKER], tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kw)
        results = []
        for ids, row in zip(batch, out[:, width:].tolist()):
            n = len(row)
            while n and row[n - 1] == tok.pad_token_id:  # finished rows are padded to the end
                n -= 1
            ended = next((k for k in range(n) if row[k] in self.eos_ids), None)
            if ended is not None:
                n = ended + 1
            finish = "stop" if ended is not None or n < cfg.max_new_tokens else "length"
            text = tok.decode(row[:n], skip_special_tokens=True)
            results.append(Completion(text, finish, prompt_tokens=len(ids), completion_tokens=n))
        return results

    def close(self) -> None:
        self.model = None
