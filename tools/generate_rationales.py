#!/usr/bin/env python
"""Generate teacher rationales (same as ``dhrd rationales generate``); see --help.

    python tools/generate_rationales.py --task cb --input CB/train.jsonl --out cb.rationales.jsonl \
        --model path/to/model          # local HF teacher (or a .gguf file)
    python tools/generate_rationales.py ... --model gpt-x --base_url http://host:8000/v1  # endpoint
"""

import sys

from dhrd.cli_errors import run_main
from dhrd.teacher.generate_cli import main

if __name__ == "__main__":
    sys.exit(run_main("generate_rationales.py", main))
