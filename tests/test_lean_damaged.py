"""``dhrd predict`` on damaged lean directories and bad options: exit code 2 and one line
naming the file (or the option), before any inference; never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.lean_helpers import REPO, make_dual_head, make_training_output


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    from dhrd.export.lean import export_lean

    root = tmp_path_factory.mktemp("lean-damaged")
    model, tok, special = make_dual_head(seed=4)
    export_lean(make_training_output(root, model, tok, special), root / "lean")
    rows = root / "in.jsonl"
    rows.write_text(json.dumps({"idx": 0, "premise": "a cat", "hypothesis": "an animal", "label": "entailment"}) + "\n")
    return root / "lean", rows


def _edit_config(d, **changes):
    cfg = json.loads((d / "lean_config.json").read_text())
    cfg.update(changes)
    (d / "lean_config.json").write_text(json.dumps(cfg))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _pickle_weights(d):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


DAMAGE = {
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
                          "model.safetensors"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 10), "model.safetensors"),
    "config not JSON": (lambda d: (d / "lean_config.json").write_text("{oops"), "lean_config.json: not valid JSON"),
    "labels wrong type": (lambda d: _edit_config(d, labels="entailment"), "field 'labels': expected list"),
    "label count": (lambda d: _edit_config(d, num_labels=3), "lean_config.json: 3 labels but"),
    "head vs hidden size": (lambda d: _edit_config(d, head_inner_size=7), "classifier_head.safetensors: does not fit"),
    "head missing": (lambda d: (d / "classifier_head.safetensors").unlink(), "classifier_head.safetensors: missing"),
    "head truncated": (lambda d: _truncate(d / "classifier_head.safetensors"),
                       "classifier_head.safetensors: not a readable safetensors file"),
    "config shapes vs weights": (lambda d: _edit_json(d / "config.json", intermediate_size=1000),
                                 "config.json: disagrees with"),
    "pickled weights": (_pickle_weights, "pytorch_model.bin: pickled weights are refused"),
    "tokenizer missing": (lambda d: [(d / f).unlink() for f in os.listdir(d) if f.startswith("tokenizer")],
                          "the tokenizer cannot be loaded"),
}


def _predict(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dhrd.cli", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env=env, cwd=REPO)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_directory_is_named(lean, tmp_path, case):
    src, rows = lean
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    damage, message = DAMAGE[case]
    damage(bad)
    proc = _predict(bad, "--input", rows)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout == ""


@pytest.mark.parametrize("args,message", [
    (["--batch_size", "0"], "--batch_size and --max_batch_tokens must be >= 1"),
    (["--output", "{tmp}"], "is not a writable file path".replace("is ", "")),
    (["--output", "{tmp}/no/such/dir/out.jsonl"], "not a writable file path"),
    (["--device", "bogus"], "--device 'bogus' is not a device (cpu, cuda, cuda:N, mps)"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "--device cuda"),
])
def test_bad_options_fail_before_loading(lean, tmp_path, args, message):
    src, rows = lean
    proc = _predict(src, "--input", rows, *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
