"""``dhrd experiment run``'s runs are silent subprocesses (their output goes to train.log):
the harness prints a periodic line per active run from its metrics.jsonl."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.distributed.train_helpers import REPO, child_env, write_model, write_task

GRID = """
name: tiny
model: ./model
common: {pack_tokens: 128, max_seq_len: 128, warmup_steps: 2, max_steps: 8, micro_batches_per_step: 2, lr: 0.01}
seeds: [0]
tasks:
  rte: {train_file: data/train.jsonl, eval_file: data/eval.jsonl, rationale_file: data/rationales.jsonl}
blocks:
  - methods: [dhrd]
"""

LINE = re.compile(r"^  rte-dhrd-s0: step (\d+)/8 \(\d+\.\d%\) \| cls [\d.]+ \| lm [\d.]+ \| ex/s [\d.]+ \| "
                  r"elapsed \w+( \| ETA \S+)?( \| final evaluation)?$", re.M)


def test_the_harness_prints_a_line_per_active_run(tmp_path):
    write_task(tmp_path / "data")
    write_model(tmp_path / "model")
    (tmp_path / "grid.yaml").write_text(GRID)
    cmd = [sys.executable, "-m", "dhrd.cli", "experiment", "run", str(tmp_path / "grid.yaml"),
           "--root", str(tmp_path / "root"), "--no_aggregate"]
    env = dict(child_env(), DHRD_PROGRESS_EVERY="0.5")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [int(m.group(1)) for m in LINE.finditer(proc.stdout)]
    assert steps and steps == sorted(steps), proc.stdout  # lines follow the run as it goes
    finals = [m.group(0) for m in LINE.finditer(proc.stdout) if m.group(3)]
    assert all(" step 8/8 " in line for line in finals), finals  # only past the last step
    assert "done rte-dhrd-s0" in proc.stdout and "\r" not in proc.stdout
