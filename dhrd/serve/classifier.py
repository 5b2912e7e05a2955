"""Batched prediction with a lean classifier directory; needs neither DeepSpeed nor peft.

x is tokenised exactly as training tokenised it (``SequenceBuilder.input_ids``: the
tokenizer's special tokens, left-truncated keeping the first token), so the pooled token
is the one the head was trained on. Batches are length-bucketed (sorted by length,
padded per batch) and RIGHT-padded: under causal attention a real token never attends to
the pads after it, so no attention mask is needed and the hidden states equal those of
the unpadded input, on the same maskless attention path training uses. The pooled
token is each row's last real token (or the mean over its real tokens)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..data.sequences import SequenceBuilder, SequenceSpec
from ..model.backbones import NO_REMOTE_CODE, check_device, refuse_remote_code
from ..model.dual_head import HEAD_FILE, make_head, pool_hidden
from .int8 import load_int8, quantize_int8
from .lean_format import WEIGHTS, LeanConfig, check_weights_fit_config, refuse_pickled_weights


def length_buckets(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so an
    out-of-memory shows at once): at most ``batch_size`` rows and, when given, at most
    ``max_batch_tokens`` padded tokens per batch (a longer single row stands alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_batch_tokens and (len(cur) + 1) * width > max_batch_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class LeanClassifier:
    """Decoder body + pooled head + the training tokenisation of x."""

    def __init__(self, decoder: nn.Module, head: nn.Module, tokenizer, config: LeanConfig,
                 device: torch.device | str = "cpu"):
        self.decoder, self.head, self.tokenizer, self.config = decoder.eval(), head.eval(), tokenizer, config
        self.device = torch.device(device)
        n = config.max_input_len
        ids = config.special_token_ids
        self.builder = SequenceBuilder(tokenizer, ids.get("reason", -1), ids.get("answer", -1),
                                       tuple(config.verbalizers),
                                       SequenceSpec(max_seq_len=n, max_input_len=n, with_reasoning=False))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    @staticmethod
    def _load_decoder(path: str, stored_int8: bool, int8: bool, torch_dtype, attn_implementation: str):
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        if stored_int8:
            decoder = AutoModel.from_config(AutoConfig.from_pretrained(path, **NO_REMOTE_CODE), dtype=torch.float32,
                                            attn_implementation=attn_implementation)
            return load_int8(decoder, load_file(os.path.join(path, WEIGHTS)), os.path.join(path, WEIGHTS))
        decoder = AutoModel.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation,
                                            use_safetensors=True, **NO_REMOTE_CODE)
        return quantize_int8(decoder) if int8 else decoder

    @classmethod
    def load(cls, path: str, device: str = "cpu", dtype: str | None = None, int8: bool | None = None,
             attn_implementation: str = "sdpa") -> "LeanClassifier":
        """``dtype``/``int8`` default to what the directory says; ``int8=True`` on a float
        directory quantises at load time exactly as the export would have."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        path = str(path)
        check_device(device)
        cfg = LeanConfig.load(path)
        refuse_remote_code(path)  # before transformers could ask to run the directory's code
        refuse_pickled_weights(path)
        stored_int8 = cfg.quantize == "int8"
        int8 = stored_int8 if int8 is None else int8
        if stored_int8 and not int8:
            raise ValueError(f"{path} holds int8 weights: it loads only with int8 (re-export for float)")
        if int8 and torch.device(device).type != "cpu":
            raise ValueError("int8 dynamic quantisation runs on CPU only")
        torch_dtype = torch.float32 if int8 else getattr(torch, dtype or cfg.dtype)
        try:
            if not stored_int8:
                check_weights_fit_config(path)
            decoder = cls._load_decoder(path, stored_int8, int8, torch_dtype, attn_implementation)
        except OSError as e:
            raise ValueError(f"{path}: the decoder weights or config cannot be read: {e}") from None
        except SafetensorError as e:  # truncated or garbage weights (not an OSError)
            raise ValueError(f"{os.path.join(path, WEIGHTS)}: not a readable safetensors file ({e})") from None
        head = make_head(cfg.head, decoder.config.hidden_size, cfg.head_outputs, cfg.head_inner_size or None)
        head_path = os.path.join(path, HEAD_FILE)
        try:
            head.load_state_dict(load_file(head_path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{head_path}: missing (the classifier head)") from None
        except SafetensorError as e:  # truncated or garbage
            raise ValueError(f"{head_path}: not a readable safetensors file ({e})") from None
        except RuntimeError as e:  # shapes that disagree with lean_config.json or the decoder
            raise ValueError(f"{head_path}: does not fit {cfg.head_outputs} output(s) ({cfg.formulation}), "
                             f"head_inner_size="
                             f"{cfg.head_inner_size}, hidden size {decoder.config.hidden_size}: "
                             f"{str(e).splitlines()[-1].strip()}") from None
        head.to(device=device, dtype=torch_dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the tokenizer cannot be loaded ({str(e).splitlines()[0][:200]})") from None
        return cls(decoder.to(device), head, tokenizer, cfg, device)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.builder.input_ids_batch(texts)

    @torch.no_grad()
    def logits(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Class logits (float32) of one right-padded batch of token id lists."""
        width = max(map(len, batch))
        ids = torch.tensor([list(row) + [self.pad_id] * (width - len(row)) for row in batch], dtype=torch.long)
        if self.device.type == "cuda":  # the copy then does not wait for the batch before it
            ids = ids.pin_memory().to(self.device, non_blocking=True)
        else:
            ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(batch), width)
        starts = torch.arange(len(batch), device=self.device) * width
        lengths = torch.tensor([len(row) for row in batch], device=self.device)
        hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        pooled = pool_hidden(hidden, starts + lengths - 1, starts, self.config.pooling)
        head_dtype = next((p.dtype for p in self.head.parameters()), torch.float32)
        return self.head(pooled.to(head_dtype)).float()

    def scores_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32,
                   max_batch_tokens: int | None = None) -> torch.Tensor:
        """The head's outputs [N, outputs] (float32) in input order, each input alone."""
        out = torch.empty(len(ids), self.config.head_outputs)
        if not ids:
            return out
        batches = length_buckets([len(x) for x in ids], batch_size, max_batch_tokens)
        # logits stay on the device until the end: no host sync between batches
        out[torch.tensor([i for batch in batches for i in batch])] = \
            torch.cat([self.logits([ids[i] for i in batch]) for batch in batches]).cpu()
        return out

    def predict_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32,
                    max_batch_tokens: int | None = None) -> torch.Tensor:
        """Class probabilities [N, C] in input order."""
        self._require("classify")
        return self.scores_ids(ids, batch_size, max_batch_tokens).softmax(-1)

    def predict(self, texts: Sequence[str], batch_size: int = 32, max_batch_tokens: int | None = None) -> torch.Tensor:
        return self.predict_ids(self.encode(texts), batch_size, max_batch_tokens)

    def predict_choices(self, questions: Sequence[Sequence[str]], batch_size: int = 32,
                        max_batch_tokens: int | None = None) -> list[torch.Tensor]:
        """A choice model: per question, the probabilities of its options (softmax over
        the option scores; each option ``[question, option]`` scored alone, as in training)."""
        self._require("choice")
        flat = [text for options in questions for text in options]
        scores = self.scores_ids(self.encode(flat), batch_size, max_batch_tokens)[:, 0]
        return [s.softmax(-1) for s in scores.split([len(options) for options in questions])]

    def _require(self, formulation: str) -> None:
        if self.config.formulation != formulation:
            how = "predict_choices (one list of option inputs per question)" if self.config.formulation == "choice" \
                else "predict (one input text per example)"
            raise ValueError(f"this is a {self.config.formulation} model (lean_config.json formulation): use {how}")
