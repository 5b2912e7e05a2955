"""``dhrd experiment run --slurm`` on the real local cluster: the grid becomes one job
array, each array task runs one run into the shared output tree, and the aggregation
afterwards sees every run; a resubmitted array reruns nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.slurm.slurm_helpers import REPO

pytestmark = pytest.mark.slurm
pytest_plugins = ["tests.slurm.slurm_fixtures"]

GRID = """
name: slurmgrid
model: {model}
common: {{pack_tokens: 128, max_seq_len: 128, warmup_steps: 1, max_steps: 3, micro_batches_per_step: 2, lr: 0.01}}
seeds: [0]
tasks:
  rte: {{train_file: {train}, eval_file: {eval}, rationale_file: {rationales}}}
blocks:
  - methods: [pooled, dhrd]
slurm: {{gpus-per-node: 0, cpus-per-task: 1, wait: true, output: "{logs}/%x-%A_%a.out"}}
"""


def _array_logs(folder) -> str:
    """The tail of every array task's log (they append: a resubmission's tasks come last)."""
    return "\n".join(f"--- {f}\n" + open(os.path.join(folder, f)).read()[-2000:]
                     for f in sorted(os.listdir(folder)) if f.endswith(".out"))


def test_grid_as_a_slurm_job_array(slurm_cluster, fixtures, tmp_path):
    paths = fixtures["rte"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(model=fixtures["model"], train=paths["train"], eval=paths["eval"],
                                rationales=paths["rationales"], logs=tmp_path))
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "dhrd.cli", "experiment", "run", str(grid), "--root", str(root), "--slurm"]
    proc = subprocess.run(cmd, cwd=REPO, env=slurm_cluster, capture_output=True, text=True, timeout=600)
    logs = _array_logs(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "--array=0-1" in proc.stdout
    for name in ("rte-pooled-s0", "rte-dhrd-s0"):
        assert (root / "runs" / name / "DONE").exists(), logs
        assert len((root / "runs" / name / "eval_predictions.jsonl").read_text().splitlines()) == 16
    agg = subprocess.run([sys.executable, "-m", "dhrd.cli", "experiment", "aggregate", str(grid), "--root", str(root),
                          "--n_boot", "50"], cwd=REPO, env=slurm_cluster, capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, agg.stderr
    res = json.loads((root / "results.json").read_text())
    assert res["gaps"][0]["variant"] == "rte-dhrd" and res["gaps"][0]["baseline"] == "rte-pooled"
    stamp = (root / "runs" / "rte-dhrd-s0" / "DONE").stat().st_mtime
    again = subprocess.run(cmd, cwd=REPO, env=slurm_cluster, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr + _array_logs(tmp_path)
    assert (root / "runs" / "rte-dhrd-s0" / "DONE").stat().st_mtime == stamp  # array task skipped the done run
