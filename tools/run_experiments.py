"""``dhrd experiment`` under its tools/ name: the same commands and flags.

    python tools/run_experiments.py run experiments/cpu_small.yaml --jobs 2
    python tools/run_experiments.py aggregate experiments/cpu_small.yaml
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhrd.experiment.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
