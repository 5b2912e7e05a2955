"""Batched prediction with a lean classifier directory (``dhrd.lean``); needs neither
DeepSpeed nor peft.

x is tokenised exactly as training tokenised it (``SequenceBuilder.input_ids``: the
tokenizer's special tokens, left-truncated keeping the first token), so the pooled token
is the one the head was trained on. Batches are length-bucketed (sorted by length,
padded per batch) and RIGHT-padded: under causal attention a real token never attends to
the pads after it, so no attention mask is needed and the hidden states equal those of
the unpadded input, on the same maskless attention path training uses. The pooled
token is each row's last real token (or the mean over its real tokens).

``dhrd predict LEAN_DIR --input FILE`` writes ``{"id", "label", "probs"}`` per example
as JSON Lines and, over the examples that have a gold label, the task's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from .backbones import NO_REMOTE_CODE, refuse_remote_code
from .data.sequences import SequenceBuilder, SequenceSpec
from .lean import HEAD_FILE, WEIGHTS, LeanConfig, load_int8, quantize_int8
from .model import make_head, pool_hidden


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
                                            **NO_REMOTE_CODE)
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
        cfg = LeanConfig.load(path)
        refuse_remote_code(path)  # before transformers could ask to run the directory's code
        stored_int8 = cfg.quantize == "int8"
        int8 = stored_int8 if int8 is None else int8
        if stored_int8 and not int8:
            raise ValueError(f"{path} holds int8 weights: it loads only with int8 (re-export for float)")
        if int8 and torch.device(device).type != "cpu":
            raise ValueError("int8 dynamic quantisation runs on CPU only")
        torch_dtype = torch.float32 if int8 else getattr(torch, dtype or cfg.dtype)
        try:
            decoder = cls._load_decoder(path, stored_int8, int8, torch_dtype, attn_implementation)
        except OSError as e:
            raise ValueError(f"{path}: the decoder weights or config cannot be read: {e}") from None
        except SafetensorError as e:  # truncated or garbage weights (not an OSError)
            raise ValueError(f"{os.path.join(path, WEIGHTS)}: not a readable safetensors file ({e})") from None
        head = make_head(cfg.head, decoder.config.hidden_size, cfg.num_labels, cfg.head_inner_size or None)
        head_path = os.path.join(path, HEAD_FILE)
        try:
            head.load_state_dict(load_file(head_path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{head_path}: missing (the classifier head)") from None
        except RuntimeError as e:  # shapes that disagree with lean_config.json or the decoder
            raise ValueError(f"{head_path}: does not fit num_labels={cfg.num_labels}, head_inner_size="
                             f"{cfg.head_inner_size}, hidden size {decoder.config.hidden_size}: "
                             f"{str(e).splitlines()[-1].strip()}") from None
        head.to(device=device, dtype=torch_dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the tokenizer cannot be loaded ({str(e).splitlines()[0][:200]})") from None
        return cls(decoder.to(device), head, tokenizer, cfg, device)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.builder.input_ids(t)[0] for t in texts]

    @torch.no_grad()
    def logits(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Class logits (float32) of one right-padded batch of token id lists."""
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(batch), width)
        starts = torch.arange(len(batch), device=self.device) * width
        lengths = torch.tensor([len(row) for row in batch], device=self.device)
        hidden = self.decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        pooled = pool_hidden(hidden, starts + lengths - 1, starts, self.config.pooling)
        head_dtype = next((p.dtype for p in self.head.parameters()), torch.float32)
        return self.head(pooled.to(head_dtype)).float()

    def predict_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32,
                    max_batch_tokens: int | None = None) -> torch.Tensor:
        """Class probabilities [N, C] in input order."""
        probs = torch.empty(len(ids), self.config.num_labels)
        for batch in length_buckets([len(x) for x in ids], batch_size, max_batch_tokens):
            probs[batch] = self.logits([ids[i] for i in batch]).softmax(-1).cpu()
        return probs

    def predict(self, texts: Sequence[str], batch_size: int = 32, max_batch_tokens: int | None = None) -> torch.Tensor:
        return self.predict_ids(self.encode(texts), batch_size, max_batch_tokens)


# ---------------------------------------------------------------------------------------
# dhrd predict

def read_examples(task_name: str, path: str):
    """The task's own reader and checks (labels optional); ``-`` is stdin, named
    ``<stdin>`` in errors. Bad rows raise DataError with file, line and field."""
    from .data.jsonl import iter_lines
    from .data.tasks import get_task

    task = get_task(task_name)
    if path != "-":
        return task.read(path, require_labels=False)
    stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes: a bad byte is reported at its line
    return task._examples(iter_lines(stream, "<stdin>"), "<stdin>", False, adapt=None)


def metrics_of(task_name: str, examples, preds) -> dict | None:
    """The task's metrics over the examples that carry a gold label (None if none do)."""
    from .data.tasks import get_task

    gold = [(p, ex) for p, ex in zip(preds, examples) if ex.label is not None]
    if not gold:
        return None
    scores = get_task(task_name).score([p for p, _ in gold], [ex.label for _, ex in gold],
                                       [ex.group for _, ex in gold])
    return {"labelled": len(gold), **scores}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhrd predict", description="batched prediction with a lean classifier")
    p.add_argument("model_dir", help="a lean classifier directory (tools/export_classifier.py)")
    p.add_argument("--input", default="-", help="task-format JSONL file; - reads stdin")
    p.add_argument("--output", default="-", help="predictions JSONL; - writes stdout")
    p.add_argument("--metrics_out", default=None, help="also write the metrics JSON here")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_batch_tokens", type=int, default=None, help="cap on padded tokens per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="default: the directory's dtype")
    p.add_argument("--int8", default=None, choices=("true", "false"), help="default: the directory's flag")
    return p


def main(argv: list[str] | None = None) -> int:
    from .data.errors import DataError

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or (args.max_batch_tokens is not None and args.max_batch_tokens < 1):
        print("dhrd predict: error: --batch_size and --max_batch_tokens must be >= 1", file=sys.stderr)
        return 2
    if args.output != "-" and (os.path.isdir(args.output)
                               or not os.path.isdir(os.path.dirname(os.path.abspath(args.output)))):
        print(f"dhrd predict: error: --output {args.output}: not a writable file path (a directory, or its "
              "folder does not exist)", file=sys.stderr)
        return 2
    try:  # the input is checked before the (possibly large) model loads
        examples = read_examples(LeanConfig.load(args.model_dir).task, args.input)
        clf = LeanClassifier.load(args.model_dir, device=args.device, dtype=args.dtype,
                                  int8=None if args.int8 is None else args.int8 == "true")
    except (DataError, OSError, ValueError) as e:
        print(f"dhrd predict: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    probs = clf.predict([ex.text for ex in examples], args.batch_size, args.max_batch_tokens)
    elapsed = time.perf_counter() - t0
    preds = probs.argmax(-1).tolist()
    labels = clf.config.labels
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        for ex, pred, p in zip(examples, preds, probs.tolist()):
            out.write(json.dumps({"id": ex.id, "label": labels[pred], "probs": dict(zip(labels, p))}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    summary = {"examples": len(examples), "seconds": round(elapsed, 4), "qps": round(len(examples) / elapsed, 2)}
    metrics = metrics_of(clf.config.task, examples, preds)
    if metrics is not None:
        summary["metrics"] = metrics
    print(json.dumps(summary), file=sys.stderr)
    if args.metrics_out:
        with open(args.metrics_out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
