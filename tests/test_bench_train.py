"""tools/bench_train.py end to end on a tiny model: every worker (the real Trainer, the
padded loops, HF Trainer) runs its steps in lock step and the table has a row each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.train_helpers import REPO, child_env, write_model, write_task


@pytest.mark.slow
@pytest.mark.parametrize("method,methods", [("dhrd", "engine,single,dss"), ("pooled", "engine,hf,single")])
def test_bench_train_runs_every_method(tmp_path, method, methods):
    paths, model = write_task(tmp_path / "data", n_train=24), write_model(tmp_path / "model")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench_train.py"), "--model", model,
                           "--method", method, "--methods", methods, "--train_file", paths["train"],
                           "--rationale_file", paths["rationales"], "--examples_per_step", "4", "--steps", "2",
                           "--max_seq_len", "128", "--pack_tokens", "128", "--threads", "1",
                           "--json_out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for m in methods.split(","):
        steps = res["results"][m]
        assert len(steps) == 2 and all(s["examples"] == 4 and s["dt"] > 0 for s in steps), (m, steps)
        assert res["peak_rss_mb"][m] > 0
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(table) == len(methods.split(",")), proc.stdout
    engine = res["results"]["engine"]
    assert all(s["real_tokens"] <= s["run_tokens"] for s in engine)
    assert all(s["fwd"] > 0 and s["bwd"] > 0 for s in engine)  # phases timed through DeepSpeed's engine


def test_bench_train_refuses_a_method_of_the_other_kind(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench_train.py"), "--method", "pooled",
                           "--methods", "dss"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=child_env())
    assert proc.returncode == 2 and "--methods dss: not a pooled method" in proc.stderr
