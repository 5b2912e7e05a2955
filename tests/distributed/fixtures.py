"""Tiny, learnable task files and a tiny model directory for the engine tests (no
/work/shared, no network). RTE format; the label is decided by one word of the premise
and the rationale names it, so both heads can learn it in a few steps."""

from __future__ import annotations

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

WORDS = ["cat", "dog", "sun", "tree", "book", "river", "stone", "cloud"]


def write_task(dirpath, n_train: int = 48, n_eval: int = 16, seed: int = 0) -> dict:
    rng = random.Random(seed)
    os.makedirs(dirpath, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows, rats = [], []
        for i in range(n):
            yes = rng.random() < 0.5
            filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            premise = f"the {filler} is {'true' if yes else 'false'}"
            rows.append({"idx": i, "premise": premise, "hypothesis": f"the {filler} holds",
                         "label": "entailment" if yes else "not_entailment"})
            rats.append({"id": str(i), "rationale": f"the premise says {'true' if yes else 'false'} "
                                                    f"so the answer is {'yes' if yes else 'no'}."})
        paths[split] = os.path.join(dirpath, f"{split}.jsonl")
        with open(paths[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        if split == "train":
            paths["rationales"] = os.path.join(dirpath, "rationales.jsonl")
            with open(paths["rationales"], "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rats)
    return paths


def write_model(dirpath, arch: str = "llama", **overrides) -> str:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import make_tiny_tokenizer, tiny_backbone

    tiny_backbone(arch, **overrides).save_pretrained(dirpath)
    make_tiny_tokenizer().save_pretrained(dirpath)
    return str(dirpath)


if __name__ == "__main__":  # python fixtures.py DIR: write both, for manual runs
    out = sys.argv[1]
    print(write_task(out), write_model(os.path.join(out, "model")))
