"""Evaluation by chain-of-thought decoding: the reasoning (LM) head writes the rationale
after ``[x, <REASON>]`` and then answers.

Needed where the classifier head is not trained (rationale-only training, beta 0) and
useful beside it (``--eval_mode both``): the LM head's own accuracy, and how often it
agrees with the classifier, say how much the two heads learned the same thing.

Decoding is greedy with the KV cache, in left-padded batches, and stops at ``<ANS>``
(or EOS, or ``max_new_tokens``). The answer is then read by likelihood, not by parsing
free text: each label's verbalizer tokens are scored after ``[x, <REASON>, r, <ANS>]``
(``<ANS>`` appended where the model did not write it) and the most likely label wins,
so every example gets a valid prediction and an unfinished rationale still counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.padding import pad_ids


@dataclass
class CotResult:
    predictions: list[int]
    rationales: list[list[int]]   # generated ids between <REASON> and the stop
    finished: list[bool]          # the model wrote <ANS> itself
    scores: list[list[float]]     # per label: log-likelihood of its verbalizer


@torch.no_grad()
def cot_predict(backbone, inputs: list[list[int]], answers: list[list[int]], *, reason_id: int, ans_id: int,
                pad_id: int, eos_id: int | None, max_new_tokens: int, device, synced_gpus: bool = False,
                min_new_tokens: int | None = None) -> CotResult:
    """One batch: ``inputs`` are the task inputs x (ids, BOS included), ``answers`` each
    label's verbalizer ids. Two model calls per batch on every rank (one ``generate``,
    one scoring forward), which keeps ZeRO-3 ranks in step when ``synced_gpus``.
    ``min_new_tokens``: no stop before that many (benchmarks decode a fixed length)."""
    prompts = [list(x) + [reason_id] for x in inputs]
    ids, mask = pad_ids(prompts, pad_id, side="left")
    stops = [ans_id] + ([eos_id] if eos_id is not None and eos_id != ans_id else [])
    out = backbone.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                            do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                            eos_token_id=stops, pad_token_id=pad_id, synced_gpus=synced_gpus,
                            min_new_tokens=min_new_tokens)
    generated = out[:, ids.shape[1]:].tolist()
    rationales, finished = [], []
    for gen in generated:
        stop = next((i for i, t in enumerate(gen) if t in stops), None)
        rationales.append(gen[:stop] if stop is not None else gen)
        finished.append(stop is not None and gen[stop] == ans_id)

    # score every label's verbalizer after [x, <REASON>, r, <ANS>]
    seqs, spans = [], []
    for p, r in zip(prompts, rationales):
        prefix = p + r + [ans_id]
        for a in answers:
            seqs.append(prefix + list(a))
            spans.append((len(prefix), len(prefix) + len(a)))
    ids, mask = pad_ids(seqs, pad_id)
    logits = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = ids[:, 1:].to(device)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scores = torch.stack([token_logp[i, s - 1:e - 1].sum() for i, (s, e) in enumerate(spans)])
    scores = scores.view(len(prompts), len(answers))
    return CotResult(scores.argmax(-1).tolist(), rationales, finished, scores.tolist())


def cot_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Example indices in batches of similar length (less padding in generate)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def resolve_eval_mode(mode: str, beta: float) -> str:
    """``auto``: the classifier where it is trained (beta > 0), CoT decoding where not."""
    if mode == "auto":
        return "cot" if beta == 0 else "classifier"
    return mode


def evaluate_cot(backbone, eval_table: dict, *, answers: list[list[int]], reason_id: int, ans_id: int,
                 pad_id: int, eos_id: int | None, dist, max_new_tokens: int, batch_size: int,
                 synced_gpus: bool) -> tuple[list[int], list[CotResult]]:
    """Predictions for every eval example (rank-sharded batches, gathered to all ranks by
    ``dist.gather_dict``)
    and this rank's raw batch results. Every rank runs the same number of batches: a
    rank without one left decodes a copy of the first (ZeRO-3 gathers are collective)."""
    batches = cot_batches(eval_table["length"], batch_size)
    n_iter = -(-len(batches) // dist.world)
    preds: dict[int, int] = {}
    results = []
    for it in range(n_iter):
        j = it * dist.world + dist.rank
        idx = batches[j] if j < len(batches) else batches[0]
        res = cot_predict(backbone, [eval_table["input_ids"][i] for i in idx], answers, reason_id=reason_id,
                          ans_id=ans_id, pad_id=pad_id, eos_id=eos_id, max_new_tokens=max_new_tokens,
                          device=dist.device, synced_gpus=synced_gpus)
        if j < len(batches):
            preds.update(zip(idx, res.predictions))
            results.append(res)
    preds = dist.gather_dict(preds)
    return [preds[i] for i in range(len(eval_table["length"]))], results
