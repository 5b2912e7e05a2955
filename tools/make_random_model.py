"""Save a randomly initialised backbone of a real shape with a real tokenizer, for
throughput and memory runs of ``dhrd/train.py`` where the weights are out of reach:

    python tools/make_random_model.py --shape llama-3.2-1b --tokenizer DIR --out /tmp/llama-1b
    python tools/make_random_model.py --shape path/to/config.json --tokenizer DIR --out OUT --device cuda
"""

from __future__ import annotations

import argparse
import sys

import torch

from dhrd.model.backbones import RANDOM_INIT_SHAPES, save_random_init


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, help=f"{', '.join(RANDOM_INIT_SHAPES)}, or a config.json path")
    p.add_argument("--tokenizer", required=True, help="directory holding a tokenizer (e.g. a model directory)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--device", default="cpu", help="where to run the initialisation (cuda is much faster)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = save_random_init(args.shape, args.tokenizer, args.out, dtype=getattr(torch, args.dtype),
                           device=args.device, seed=args.seed)
    print(out)


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("make_random_model.py", main))
