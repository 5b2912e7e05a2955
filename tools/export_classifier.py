"""An alias of ``dhrd export`` (dhrd/export/cli.py), kept for scripts and jobs that call
it by path: same arguments, same output, same exit codes.

    python tools/export_classifier.py OUTPUT_DIR OUT_DIR [--format lean|hf|all] [--tag TAG]
        [--dtype float32|bfloat16|float16] [--int8]
"""

from __future__ import annotations

import sys

from dhrd.cli_errors import run_main
from dhrd.export.cli import main

if __name__ == "__main__":
    sys.exit(run_main("export_classifier", lambda argv: main(argv, prog="export_classifier.py"), sys.argv[1:]))
