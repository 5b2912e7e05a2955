#!/usr/bin/env python
"""Generate teacher rationales (same as ``dhrd rationales generate``); see --help.

    python tools/generate_rationales.py --task cb --input CB/train.jsonl --out cb.rationales.jsonl \
        --model path/to/model          # local HF teacher (or a .gguf file)
    python tools/generate_rationales.py ... --model gpt-x --base_url http://host:8000/v1  # endpoint
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout, uninstalled

from dhrd.cli_errors import run_main  # noqa: E402
from dhrd.teacher.generate_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main("generate_rationales.py", main))
