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
            cue = "true" if yes else "false"
            premise = f"{cue} {cue}: the {filler} is {cue}"
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
    from tests.helpers import make_tiny_tokenizer, tiny_backbone

    tiny_backbone(arch, **overrides).save_pretrained(dirpath)
    make_tiny_tokenizer().save_pretrained(dirpath)
    return str(dirpath)


TINY_ARGS = ["--task", "rte", "--pack_tokens", "128", "--max_seq_len", "128", "--progress", "false",
             "--warmup_steps", "2"]


def train_argv(model_dir, paths, out_dir, *extra) -> list[str]:
    """train.py's arguments for the tiny task (``dhrd.train.main(argv)`` takes them as is)."""
    return ["--model", str(model_dir), "--train_file", paths["train"], "--eval_file", paths["eval"],
            "--rationale_file", paths["rationales"], "--output_dir", str(out_dir), *TINY_ARGS, *map(str, extra)]


def train_command(model_dir, paths, out_dir, *extra, nprocs: int = 1) -> list[str]:
    """``python dhrd/train.py`` for one process, ``deepspeed --num_gpus N`` for more."""
    script = os.path.join(REPO, "dhrd", "train.py")
    launcher = [sys.executable, script] if nprocs == 1 else \
        ["deepspeed", "--num_gpus", str(nprocs), "--master_port", str(_free_port()), script]
    return [*launcher, *train_argv(model_dir, paths, out_dir, *extra)]


def run_train(model_dir, paths, out_dir, *extra, nprocs: int = 1, timeout: int = 300):
    import subprocess

    cmd = train_command(model_dir, paths, out_dir, *extra, nprocs=nprocs)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=child_env())
    return proc


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


from dhrd.fileio import free_port as _free_port  # noqa: E402  (the helpers' old name)


def losses(out_dir, key: str = "train/loss_total") -> dict[int, float]:
    """step -> value from metrics.jsonl; a later line for the same step (a resumed run
    redoing steps after its checkpoint) replaces an earlier one."""
    out = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["kind"] == "train" and key in row:
                out[row["step"]] = row[key]
    return out


if __name__ == "__main__":  # python train_helpers.py DIR: write both, for manual runs
    out = sys.argv[1]
    print(write_task(out), write_model(os.path.join(out, "model")))
