"""``dhrd experiment`` under its tools/ name: the same commands and flags.

    python tools/run_experiments.py run experiments/cpu_small.yaml --jobs 2
    python tools/run_experiments.py aggregate experiments/cpu_small.yaml
"""

import sys

from dhrd.experiment.cli import main

if __name__ == "__main__":
    sys.exit(main())
