"""The demo's generated task (every rationale is correct arithmetic whose conclusion is
the gold label) and one end-to-end run of ``python -m dhrd.demo`` on a tiny model."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from train_helpers import REPO, child_env, write_model  # noqa: E402

from dhrd.demo import make_example  # noqa: E402

EXPR = r"\d+(?: [+*] \d+)*"


def _value(expr: str) -> int:
    assert re.fullmatch(EXPR, expr), expr
    return eval(expr)  # digits, + and * only (checked above)


def test_rationale_determines_the_label():
    rng = random.Random(0)
    labels = []
    for i in range(500):
        row, rat = make_example(rng, i)
        q = re.fullmatch(rf"Is ({EXPR}) more than (\d+)\?", row["question"])
        assert q, row["question"]
        truth = _value(q[1]) > int(q[2])
        assert row["label"] == rat["teacher_label"] == ("yes" if truth else "no")
        steps = rat["rationale"].split(". ")
        for eq in steps[:-1]:  # every written-out step is correct arithmetic
            lhs, rhs = eq.split(" = ")
            assert _value(lhs) == int(rhs), rat["rationale"]
        # the last step compares the computed value with the threshold: it alone gives the label
        c = re.fullmatch(r"(\d+) ([<>]) (\d+)\.", steps[-1])
        assert c and int(c[3]) == int(q[2]) and int(c[1]) == _value(q[1]), rat["rationale"]
        assert (c[2] == ">") == truth
        labels.append(truth)
    assert 0.3 < sum(labels) / len(labels) < 0.7  # both answers common


def test_demo_runs_end_to_end(tmp_path):
    model = write_model(tmp_path / "model")
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "dhrd.demo", "--model", model, "--workdir", str(work),
                           "--train", "16", "--eval", "8", "--steps", "2", "--seeds", "0", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    assert set(results["accuracy"]) == {"dhrd", "pooled"}
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in results["accuracy"].values())
    assert "dhrd - pooled" in proc.stdout
