#!/usr/bin/env python
"""Import released rationales (same as ``dhrd rationales import``); see --help.

    python tools/import_rationales.py --task cqa --root palm-cot --split train --out cqa.palm.jsonl --report
    python tools/import_rationales.py --task esnli --root palm-cot --split valid --source human --out esnli.human.jsonl
"""

import sys

from dhrd.cli_errors import run_main
from dhrd.teacher.palm_cot import main

if __name__ == "__main__":
    sys.exit(run_main("import_rationales.py", main))
