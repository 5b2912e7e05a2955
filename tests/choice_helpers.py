"""A tiny, learnable multiple-choice task in COPA's format (premise, choice1, choice2,
question, label): the right option ends in "good", the wrong one in "bad", in random
order; the rationale names it. Both heads can learn it in a few steps."""

from __future__ import annotations

import os
import random

WORDS = ["cat", "dog", "sun", "tree", "book", "river", "stone", "cloud"]


def choice_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        right, wrong = f"the {rng.choice(WORDS)} is good", f"the {rng.choice(WORDS)} is bad"
        label = rng.randint(0, 1)
        options = (right, wrong) if label == 0 else (wrong, right)
        rows.append({"idx": i, "premise": f"the {filler} fell", "choice1": options[0], "choice2": options[1],
                     "question": rng.choice(("cause", "effect")), "label": label})
    return rows


def write_choice_task(dirpath, n_train: int = 48, n_eval: int = 32, seed: int = 0) -> dict:
    from dhrd.fileio import atomic_write_jsonl

    os.makedirs(dirpath, exist_ok=True)
    paths = {split: os.path.join(dirpath, f"{split}.jsonl") for split in ("train", "eval", "rationales")}
    train = choice_rows(n_train, seed)
    atomic_write_jsonl(paths["train"], train)
    atomic_write_jsonl(paths["eval"], choice_rows(n_eval, seed + 1))
    atomic_write_jsonl(paths["rationales"], [{"id": str(r["idx"]), "rationale": f"option {r['label'] + 1} says good."}
                                             for r in train])
    return paths
