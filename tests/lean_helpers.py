"""Helpers shared by the export, inference and serving tests: a tiny dual-head model, a
training output directory written by the engine's own final-export writer, and the
in-training classifier's probabilities to compare exports against."""

from __future__ import annotations

import json
import os

import torch

from tests.helpers import make_tiny_tokenizer, tiny_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_INPUT_LEN = 40
TEXTS = ["Premise: the cat is true\nHypothesis: the cat holds\nAnswer yes or no.",
         "Premise: false false: the river is false\nHypothesis: the river holds",
         "short", "a b c d e f g h " * 12]  # the last is left-truncated to MAX_INPUT_LEN


def make_dual_head(tied: bool = False, pooling: str = "last", seed: int = 0, arch: str = "llama", head: str = "mlp"):
    from dhrd.model.dual_head import DualHeadModel, add_reasoning_tokens

    tok = make_tiny_tokenizer()
    backbone = tiny_backbone(arch, seed=seed, tie_word_embeddings=tied)
    special = add_reasoning_tokens(tok, backbone)
    torch.manual_seed(seed + 1)
    model = DualHeadModel(backbone, 2, pooling=pooling, head=head).eval()
    return model, tok, special


def make_training_output(root, model, tok, special, *, eval_metrics=None) -> str:
    """A training output dir with config.json and a final/ written by dhrd.export's own writer."""
    from dhrd.config import DataArgs, LossArgs, ModelArgs, TrainArgs, resolved_config
    from dhrd.data.tasks import get_task
    from dhrd.engine.final import _write_final
    from dhrd.model.dual_head import head_kind

    out = os.path.join(root, "run")
    os.makedirs(out, exist_ok=True)
    margs = ModelArgs(model=os.path.join(root, "base"), pooling=model.pooling, head=head_kind(model.head))
    dargs = DataArgs(task="rte", max_seq_len=64, max_input_len=MAX_INPUT_LEN, pack_tokens=64)
    largs = LossArgs(alpha=0.5)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({**resolved_config(margs, dargs, largs, TrainArgs(output_dir=out)),
                   "derived": {"special_token_ids": list(special), "world_size": 1}}, f)
    if eval_metrics is not None:
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump({"task": "rte", "step": 7, "metrics": eval_metrics, "history": []}, f)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    _write_final(state, model, tok, special, get_task("rte"), margs, dargs, largs, os.path.join(out, "final"))
    return out


def reference_probs(model, tok, texts=TEXTS) -> torch.Tensor:
    """The in-training classifier: DualHeadModel on each x alone, tokenised as training does."""
    from dhrd.data.sequences import SequenceBuilder, SequenceSpec

    b = SequenceBuilder(tok, 0, 0, ("yes", "no"), SequenceSpec(max_seq_len=64, max_input_len=MAX_INPUT_LEN))
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([b.input_ids(t)[0]])
            n = ids.shape[1]
            out = model(ids, torch.arange(n)[None], torch.tensor([n - 1]), torch.tensor([0]))
            rows.append(out.cls_logits.float().softmax(-1)[0])
    return torch.stack(rows)


def tensor_names(lean_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(os.path.join(lean_dir, "model.safetensors"), "pt") as f:
        return set(f.keys())
