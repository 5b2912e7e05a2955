"""A model directory that ships its own Python (``auto_map`` in its config or tokenizer
config) is refused by every loader, with the file named, and its code never runs: not
for training, not for ``dhrd predict`` even with ``y`` waiting on stdin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.lean_helpers import REPO, make_dual_head, make_training_output

PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def _plant(dirpath, marker, which="config.json"):
    """Custom code beside the weights, named by auto_map in ``which``."""
    (dirpath / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    path = dirpath / which
    cfg = json.loads(path.read_text()) if path.exists() else {}
    key = "AutoTokenizer" if which == "tokenizer_config.json" else "AutoModel"
    cfg["auto_map"] = {key: "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("which", ["config.json", "tokenizer_config.json"])
def test_backbone_and_tokenizer_loaders_refuse(tmp_path, which):
    from dhrd.model.backbones import RemoteCodeRefused, load_backbone, load_tokenizer
    from tests.helpers import make_tiny_tokenizer, tiny_backbone

    model_dir = tmp_path / "model"
    tiny_backbone("llama").save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    marker = tmp_path / "ran"
    _plant(model_dir, marker, which)
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(RemoteCodeRefused, match=rf"{which}: 'auto_map' names custom code"):
            load(str(model_dir))
    assert not marker.exists()


def test_predict_refuses_with_yes_on_stdin(tmp_path):
    from dhrd.export.lean import export_lean

    model, tok, special = make_dual_head(seed=2)
    lean = tmp_path / "lean"
    export_lean(make_training_output(tmp_path, model, tok, special), lean)
    bad = tmp_path / "bad"
    shutil.copytree(lean, bad)
    marker = tmp_path / "ran"
    _plant(bad, marker)
    rows = tmp_path / "in.jsonl"
    row = {"idx": 0, "premise": "a cat", "hypothesis": "an animal", "label": "entailment"}  # rte
    rows.write_text(json.dumps(row) + "\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "dhrd.cli", "predict", str(bad), "--input", str(rows)],
                          input="y\ny\ny\n", capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{bad}/config.json: 'auto_map' names custom code" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not marker.exists()
