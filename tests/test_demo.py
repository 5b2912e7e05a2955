"""The demo's generated task (every rationale is correct arithmetic whose conclusion is
the gold label) and one end-to-end run of ``python -m dhrd.demo`` on a tiny model."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest

from dhrd.demo import make_example  # noqa: E402
from tests.distributed.train_helpers import REPO, child_env, write_model  # noqa: E402

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


def test_bundled_slice_is_real_aligned_and_small():
    from dhrd.data.rationales import attach_rationales, read_rationales
    from dhrd.data.tasks import get_task
    from dhrd.demo import DATA

    task = get_task("esnli")
    train, dev = task.read(os.path.join(DATA, "train.jsonl")), task.read(os.path.join(DATA, "dev.jsonl"))
    assert len(train) == 1000 and len(dev) == 500
    assert not {e.fields["premise"] for e in train} & {e.fields["premise"] for e in dev}  # carved by premise
    rats = read_rationales(os.path.join(DATA, "rationales.jsonl"), task.labels)
    items = attach_rationales(train, rats, task.labels)  # refuses misaligned ids (chance-level agreement)
    agree = sum(rats[e.id].teacher_label == task.labels[e.label] for e in train if e.id in rats) / len(rats)
    assert sum(it.rationale is not None for it in items) == len(rats) >= 990 and 0.6 < agree < 0.9
    size = sum(os.path.getsize(os.path.join(DATA, f)) for f in os.listdir(DATA))
    assert size < 1_000_000
    readme = open(os.path.join(DATA, "README.md")).read()
    assert "CC BY-SA 4.0" in readme and "Apache-2.0" in readme and "MIT" in readme


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    model = write_model(tmp_path / "model")
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "dhrd.demo", "--model", model, "--workdir", str(work), "--train", "24",
           "--eval", "16", "--max_steps", "2", "--seeds", "0,1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((work / "results" / "results.json").read_text())
    assert {v["method"] for v in res["variants"]} == {"dhrd", "pooled"}
    assert all(v["n"] == 2 and v["n_eval"] == 16 for v in res["variants"])
    gap = res["gaps"][0]
    assert gap["baseline"] == "esnli-pooled" and len(gap["gap_per_seed"]) == 2
    assert "95% interval" in proc.stdout and "| esnli | dhrd | pooled |" in proc.stdout
    png = work / "demo.png"
    assert f"Figure (training losses, held-out accuracy and the paired interval): {png}" in proc.stdout
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]
    assert w > 1000 and h > 400  # two panels, not an empty canvas
    cfg = json.loads((work / "results" / "runs" / "esnli-dhrd-s0" / "config.json").read_text())
    assert cfg["data"]["max_train_examples"] == 24 and cfg["data"]["train_file"].endswith("demo_data/esnli/train.jsonl")
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200, env=child_env())
    assert again.returncode == 0 and "4 done, 0 to run" in again.stdout  # resumable: nothing rerun


@pytest.mark.slow
def test_demo_sum4_option_from_another_directory(tmp_path):
    """Run from anywhere with a relative work dir (the runs start in the repository: their
    paths once stayed relative and every run failed with 'No such file')."""
    model = write_model(tmp_path / "model")
    proc = subprocess.run([sys.executable, "-m", "dhrd.demo", "--task", "sum4", "--model", model, "--workdir",
                           "demo", "--train", "16", "--eval", "8", "--max_steps", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| sum4 | dhrd | pooled |" in proc.stdout
    assert (tmp_path / "demo" / "results" / "results.md").exists()
