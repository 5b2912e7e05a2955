#!/usr/bin/env python
"""Import released rationales (same as ``dhrd rationales import``); see --help.

    python tools/import_rationales.py --task cqa --root palm-cot --split train --out cqa.palm.jsonl --report
    python tools/import_rationales.py --task esnli --root palm-cot --split valid --source human --out esnli.human.jsonl
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout, uninstalled

from dhrd.cli_errors import run_main  # noqa: E402
from dhrd.teacher.palm_cot import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main("import_rationales.py", main))
