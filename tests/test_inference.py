"""Batched lean inference (dhrd.serve.classifier) and ``dhrd predict``: length buckets, batch
composition not changing predictions, the JSONL output with metrics, and loading with
DeepSpeed made unimportable."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.lean_helpers import REPO, TEXTS, make_dual_head, make_training_output, reference_probs


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    from dhrd.export.lean import export_lean

    root = tmp_path_factory.mktemp("lean")
    model, tok, special = make_dual_head(seed=5)
    export_lean(make_training_output(root, model, tok, special), root / "lean")
    return str(root / "lean"), model, tok


def test_length_buckets_sort_and_cap():
    from dhrd.serve.classifier import length_buckets

    lengths = [5, 50, 7, 48, 6, 49, 200]
    assert length_buckets(lengths, 3) == [[6, 1, 5], [3, 2, 4], [0]]
    capped = length_buckets(lengths, 8, max_batch_tokens=100)
    assert capped == [[6], [1, 5], [3, 2], [4, 0]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in capped[1:])
    assert sorted(i for b in capped for i in b) == list(range(len(lengths)))


def test_batching_does_not_change_predictions(lean):
    from dhrd.serve.classifier import LeanClassifier

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


# DeepSpeed made to look uninstalled: every meta-path finder is wrapped so that it finds
# no ``deepspeed*`` module (find_spec gives None, ``import deepspeed`` raises
# ModuleNotFoundError, as without the package). On the way out the child checks that
# neither DeepSpeed nor peft was imported.
BLOCK_DS = """
import sys

class HideDeepSpeed:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "deepspeed" or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [HideDeepSpeed(f) for f in sys.meta_path]
from dhrd.cli import main
rc = main(sys.argv[1:])
leaked = [m for m in sys.modules if m.split(".")[0] in ("deepspeed", "peft")]
if leaked:
    sys.exit(f"imported {leaked}")
sys.exit(rc)
"""


def _predict(args, stdin=None, code=BLOCK_DS):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, "predict", *args], input=stdin, capture_output=True,
                          text=True, timeout=180, env=env, cwd=REPO)


def test_predict_cli_without_deepspeed(lean, tmp_path):
    """``dhrd predict`` over a labelled file in a child where DeepSpeed is not installed."""
    from dhrd.data.tasks import get_task
    from dhrd.serve.classifier import LeanClassifier

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
    expect = {"labelled": 7, **get_task("rte").score(want.argmax(-1).tolist(), [e.label for e in examples])}
    assert metrics == expect and json.loads(proc.stderr.strip().splitlines()[-1])["metrics"] == expect


def test_the_blocker_blocks():
    code = BLOCK_DS.replace("from dhrd.cli import main", "import importlib.util\n"
                            "assert importlib.util.find_spec('deepspeed') is None\nimport deepspeed")
    proc = _predict([], code=code)
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'deepspeed'" in proc.stderr


def _predict_here(args, capsys, monkeypatch, stdin=None):
    """``dhrd predict`` in this process: (exit code, stdout, stderr)."""
    from dhrd.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_stdin_partial_labels_and_bad_lines(lean, tmp_path, capsys, monkeypatch):
    path = lean[0]
    # unlabelled rows from stdin to stdout: predictions, no metrics
    rc, out, err = _predict_here([path], capsys, monkeypatch,
                                 stdin="".join(json.dumps(r) + "\n" for r in _rows(3, labelled=False)))
    assert rc == 0 and len(out.strip().splitlines()) == 3
    assert "metrics" not in json.loads(err.strip().splitlines()[-1])
    # some rows labelled: metrics over those
    rows = _rows(4, labelled=True)
    del rows[1]["label"]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = _predict_here([path, "--input", tmp_path / "mixed.jsonl"], capsys, monkeypatch)
    assert rc == 0 and json.loads(err.strip().splitlines()[-1])["metrics"]["labelled"] == 3

    good = json.dumps(_rows(1, labelled=True)[0])
    bad = {"malformed.jsonl": (good + "\n\n{oops\n", r"malformed\.jsonl:3: malformed JSON"),
           "no_premise.jsonl": (good + '\n{"idx": 5, "hypothesis": "h"}\n',
                                r"no_premise\.jsonl:2: field 'premise': missing"),
           "bad_label.jsonl": ('{"idx": 0, "premise": "p", "hypothesis": "h", "label": "maybe"}\n',
                               r"bad_label\.jsonl:1: field 'label': unknown label \"maybe\"")}
    for name, (text, want) in bad.items():
        (tmp_path / name).write_text(text)
        rc, out, err = _predict_here([path, "--input", tmp_path / name], capsys, monkeypatch)
        assert rc == 2 and out == "" and re.fullmatch("dhrd predict: error: .*" + want + ".*", err.strip()), err
    rc, _, err = _predict_here([path], capsys, monkeypatch,
                               stdin=good + "\n" + '{"idx": 1, "premise": 3, "hypothesis": "h"}\n')
    assert rc == 2 and "<stdin>:2: field 'premise': expected a string, got an integer" in err
    rc, _, err = _predict_here([path, "--input", tmp_path / "absent.jsonl"], capsys, monkeypatch)
    assert rc == 2 and "absent.jsonl" in err
    rc, _, err = _predict_here([tmp_path], capsys, monkeypatch, stdin=good)
    assert rc == 2 and "not a model directory: neither lean_config.json" in err
