"""Batched lean inference (dhrd.inference) and ``dhrd predict``: length buckets, batch
composition not changing predictions, the JSONL output with metrics, and loading with
DeepSpeed made unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_lean import REPO, TEXTS, make_dual_head, make_training_output, reference_probs


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    from dhrd.lean import export_lean

    root = tmp_path_factory.mktemp("lean")
    model, tok, special = make_dual_head(seed=5)
    export_lean(make_training_output(root, model, tok, special), root / "lean")
    return str(root / "lean"), model, tok


def test_length_buckets_sort_and_cap():
    from dhrd.inference import length_buckets

    lengths = [5, 50, 7, 48, 6, 49, 200]
    assert length_buckets(lengths, 3) == [[6, 1, 5], [3, 2, 4], [0]]
    capped = length_buckets(lengths, 8, max_batch_tokens=100)
    assert capped == [[6], [1, 5], [3, 2], [4, 0]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in capped[1:])
    assert sorted(i for b in capped for i in b) == list(range(len(lengths)))


def test_batching_does_not_change_predictions(lean):
    from dhrd.inference import LeanClassifier

    path, model, tok = lean
    clf = LeanClassifier.load(path)
    texts = TEXTS * 3
    one = clf.predict(texts, batch_size=1)
    for kw in ({"batch_size": 5}, {"batch_size": 64}, {"batch_size": 64, "max_batch_tokens": 90}):
        assert float((clf.predict(texts, **kw) - one).abs().max()) < 1e-5, kw
    assert float((one[: len(TEXTS)] - reference_probs(model, tok)).abs().max()) < 1e-5


def _rows(n: int, labelled: bool) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"idx": i, "premise": f"the {'cat ' * (i + 1)}is {'true' if i % 2 else 'false'}",
               "hypothesis": "the cat holds"}
        if labelled:
            row["label"] = "entailment" if i % 2 else "not_entailment"
        rows.append(row)
    return rows


BLOCK_DS = "import sys; sys.modules['deepspeed'] = None; from dhrd.cli import main; sys.exit(main(sys.argv[1:]))"


def _predict(args, stdin=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", BLOCK_DS, "predict", *args], input=stdin, capture_output=True,
                          text=True, timeout=180, env=env, cwd=REPO)


def test_predict_cli_without_deepspeed(lean, tmp_path):
    from dhrd.data.tasks import get_task
    from dhrd.inference import LeanClassifier

    path = lean[0]
    data = tmp_path / "eval.jsonl"
    rows = _rows(7, labelled=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _predict([path, "--input", str(data), "--output", str(tmp_path / "pred.jsonl"), "--batch_size", "3",
                     "--metrics_out", str(tmp_path / "m.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(line) for line in open(tmp_path / "pred.jsonl")]
    assert [p["id"] for p in preds] == [str(i) for i in range(7)]
    assert all(set(p["probs"]) == {"entailment", "not_entailment"} and
               abs(sum(p["probs"].values()) - 1) < 1e-5 and p["label"] == max(p["probs"], key=p["probs"].get)
               for p in preds)
    examples = get_task("rte").read(data)
    want = LeanClassifier.load(path).predict([e.text for e in examples])
    got = torch.tensor([[p["probs"]["entailment"], p["probs"]["not_entailment"]] for p in preds])
    assert float((got - want).abs().max()) < 1e-5
    metrics = json.load(open(tmp_path / "m.json"))["metrics"]
    expect = get_task("rte").score(want.argmax(-1).tolist(), [e.label for e in examples])
    assert metrics == expect and json.loads(proc.stderr.strip().splitlines()[-1])["metrics"] == expect

    # unlabelled rows from stdin to stdout: predictions, no metrics
    stdin = "".join(json.dumps(r) + "\n" for r in _rows(3, labelled=False))
    proc = _predict([path], stdin=stdin)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 3
    assert "metrics" not in json.loads(proc.stderr.strip().splitlines()[-1])


def test_deepspeed_really_is_blocked(lean):
    code = "import sys; sys.modules['deepspeed'] = None\ntry:\n import deepspeed\nexcept ImportError:\n sys.exit(7)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7
