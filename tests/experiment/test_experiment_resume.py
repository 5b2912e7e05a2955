"""``dhrd experiment run`` through the real engine on a tiny model: a grid killed part-way
continues without rerunning its finished runs, then aggregates; its records outlive the
run directories; carving keeps ids."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
from dhrd.experiment.grid import GridError, load_grid  # noqa: E402
from tests.distributed.train_helpers import REPO, child_env, write_model, write_task  # noqa: E402

GRID = """
name: tiny
model: ./model
common: {pack_tokens: 128, max_seq_len: 128, warmup_steps: 2, max_steps: 4, micro_batches_per_step: 2,
         lr: 0.01, save_every: 2}
seeds: [0, 1]
tasks:
  rte: {train_file: data/train.jsonl, eval_file: data/eval.jsonl, rationale_file: data/rationales.jsonl}
blocks:
  - methods: [pooled, dhrd]
"""


def _headers(run_dir):
    return open(os.path.join(run_dir, "train.log")).read().count("\n=== ")


@pytest.mark.slow
def test_killed_grid_resumes_without_rerunning_finished_runs(tmp_path):
    write_task(tmp_path / "data")
    write_model(tmp_path / "model")
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "dhrd.cli", "experiment", "run", str(grid), "--root", str(root), "--jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    first = root / "runs" / "rte-pooled-s0" / "DONE"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.stdout.read()[-3000:] if proc.poll() is not None else "first run never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and its running child, mid-grid
    proc.wait()
    done_before = {p.name for p in (root / "runs").iterdir() if (p / "DONE").exists()}
    assert "rte-pooled-s0" in done_before and len(done_before) < 4
    stamp = first.stat().st_mtime

    out = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(done_before)} done, {4 - len(done_before)} to run" in out.stdout
    assert first.stat().st_mtime == stamp and _headers(root / "runs" / "rte-pooled-s0") == 1  # never rerun
    for name in ("rte-pooled-s0", "rte-pooled-s1", "rte-dhrd-s0", "rte-dhrd-s1"):
        run = root / "runs" / name
        assert (run / "DONE").exists() and not (run / "checkpoints").exists(), out.stdout[-3000:]
        preds = [json.loads(x) for x in open(run / "eval_predictions.jsonl")]
        assert len(preds) == 16 and {"id", "label", "pred"} <= set(preds[0])
    md = (root / "results.md").read_text()
    assert "| rte | dhrd | 2 |" in md and "| rte | dhrd | pooled |" in md
    assert (root / "plots" / "bars_rte.png").stat().st_size > 0

    again = subprocess.run(cmd + ["--no_aggregate"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "4 done, 0 to run" in again.stdout

    # the run directories lost (a scratch disk wiped, the root copied without them): the
    # root's records.jsonl holds what the results need, and the runs stay done
    md = (root / "results.md").read_text()
    records = (root / "records.jsonl").read_text()
    assert len(records.splitlines()) == 4
    shutil.rmtree(root / "runs")
    agg = subprocess.run([sys.executable, "-m", "dhrd.cli", "experiment", "aggregate", str(grid), "--root", str(root)],
                         cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert agg.returncode == 0 and (root / "results.md").read_text() == md, agg.stdout[-2000:] + agg.stderr[-2000:]
    assert (root / "plots" / "loss_rte.png").stat().st_size > 0  # the loss curves are in the records too
    again = subprocess.run(cmd + ["--no_aggregate"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "4 done, 0 to run" in again.stdout and not (root / "runs").exists()

    # the grid edited after its runs trained: refused, not mixed in (finished runs would
    # keep the old recipe under the same names); `list` names them
    grid.write_text(GRID.replace("lr: 0.01", "lr: 0.02"))
    mixed = subprocess.run(cmd + ["--no_aggregate"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=120)
    assert mixed.returncode == 2, mixed.stdout[-2000:] + mixed.stderr[-2000:]
    assert "4 run(s) were started with other arguments than the grid now gives them" in mixed.stderr
    assert "rte-pooled-s0 (lr: 0.01 -> 0.02)" in mixed.stderr and "Traceback" not in mixed.stderr
    listed = subprocess.run([sys.executable, "-m", "dhrd.cli", "experiment", "list", str(grid), "--root", str(root)],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("changed") == 4, listed.stdout  # (from the records)
    assert (root / "records.jsonl").read_text() == records


def test_carve_keeps_ids_so_one_rationale_file_serves_both_splits(tmp_path):
    from dhrd.data.tasks import get_task
    from dhrd.experiment.prepare import carve

    src = tmp_path / "esnli.jsonl"
    rows = [{"premise": f"p{i // 3}", "hypothesis": f"h{i}", "label": i % 3} for i in range(30)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = carve("esnli", str(src), str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), dev_size=9,
                 seed=0, group_by="premise")
    assert info["dev"] == 9 and info["train"] == 21
    task = get_task("esnli")
    dev, train = task.read(tmp_path / "dev.jsonl"), task.read(tmp_path / "train.jsonl")
    by_id = {str(i): r for i, r in enumerate(rows)}
    for ex in dev + train:  # the id is the row number in the source: the source's rationales still match
        assert ex.fields["hypothesis"] == by_id[ex.id]["hypothesis"]
    assert not {e.fields["premise"] for e in dev} & {e.fields["premise"] for e in train}
    assert sorted(int(e.id) for e in dev + train) == list(range(30))


def test_changed_args_compares_what_the_run_resolved(tmp_path, monkeypatch):
    """A started run is compared as train.py resolved it (its config.json): a changed
    --method preset or default counts as a change even where the grid file is the same,
    and spelling out a default the run already had does not."""
    from dhrd import config
    from dhrd.experiment.grid import load_grid
    from dhrd.experiment.runner import changed_args, resolved_args, run_dir, train_command, write_run_config

    text = GRID.replace("model: ./model", "model: smollm2")
    (tmp_path / "grid.yaml").write_text(text)
    grid = load_grid(str(tmp_path / "grid.yaml"))
    root = str(tmp_path / "root")
    run = next(r for r in grid.runs if r.name == "rte-dhrd-s0")
    flat = resolved_args(train_command(write_run_config(grid, root, run))[2:])
    sections = {sec: {f.name: flat[f.name] for f in fields(cls)}
                for sec, cls in zip(("model", "data", "loss", "train"), config.ARG_CLASSES)}
    (tmp_path / "root" / "runs" / "rte-dhrd-s0" / "config.json").write_text(json.dumps(sections))
    assert os.path.dirname(run_dir(root, run)) == str(tmp_path / "root" / "runs")
    assert changed_args(grid, root, run) == {}

    sibling = next(r for r in grid.runs if r.name == "rte-dhrd-s1")  # not started: compared with seed 0
    assert changed_args(grid, root, sibling) == {}
    was = config.METHODS["dhrd"]["alpha"]
    monkeypatch.setitem(config.METHODS, "dhrd", {**config.METHODS["dhrd"], "alpha": 0.5})  # a new preset
    assert changed_args(grid, root, run) == {"alpha": (was, 0.5)}
    assert changed_args(grid, root, sibling) == {"alpha (seed 0 had it)": (was, 0.5)}
    # a grid that pins what its dhrd meant keeps its runs when the preset's default moves on
    (tmp_path / "grid.yaml").write_text(text.replace("blocks:", f"presets: {{dhrd: {{alpha: {was}}}}}\nblocks:"))
    pinned = load_grid(str(tmp_path / "grid.yaml"))
    assert [r.name for r in pinned.runs] == [r.name for r in grid.runs]
    assert changed_args(pinned, root, run) == {} and changed_args(pinned, root, sibling) == {}
    monkeypatch.undo()
    (tmp_path / "grid.yaml").write_text(text)

    for common, expected in (("head: linear", {}), ("head: mlp", {"head": ("linear", "mlp")})):
        (tmp_path / "grid.yaml").write_text(text.replace("save_every: 2}", f"save_every: 2, {common}}}"))
        assert changed_args(load_grid(str(tmp_path / "grid.yaml")), root, run) == expected


SOURCES_GRID = """
name: sources
model: smollm2
seeds: [0]
tasks:
  esnli:
    train_file: d/train.jsonl
    eval_file: d/dev.jsonl
    rationale_file: d/palm.jsonl
    rationale_sources: {human: d/human.jsonl, human3: d/human3.jsonl}
    prepare:
      source: src.jsonl
      dev_size: 6
      group_by: premise
      human: {human: [explanation_1], human3: [explanation_1, explanation_2, explanation_3]}
blocks:
  - methods: [pooled]
  - methods: [dhrd]
    axes: {rationales: [palm, human, human3]}
"""


def test_rationale_sources_are_an_axis_prepared_from_the_rows(tmp_path, capsys):
    from dhrd.data.rationales import attach_rationales, read_rationales
    from dhrd.data.tasks import get_task
    from dhrd.experiment.cli import main as experiment_main
    from dhrd.experiment.runner import prepare, run_args

    rows = [{"premise": f"p{i // 3}", "hypothesis": f"h{i}", "label": i % 3, "explanation_1": f"e1 {i}",
             "explanation_2": f"e2 {i}", "explanation_3": "" if i == 4 else f"e3 {i}"} for i in range(18)]
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "grid.yaml").write_text(SOURCES_GRID)
    grid = load_grid(str(tmp_path / "grid.yaml"))
    # the default source keeps the name a block without the axis gives (one run, one recipe)
    assert [r.name for r in grid.runs] == ["esnli-pooled-s0", "esnli-dhrd-s0", "esnli-dhrd-rathuman-s0",
                                           "esnli-dhrd-rathuman3-s0"]
    files = {r.name: run_args(grid, str(tmp_path / "root"), r)["rationale_file"] for r in grid.runs[1:]}
    assert files == {"esnli-dhrd-s0": str(tmp_path / "d" / "palm.jsonl"),
                     "esnli-dhrd-rathuman-s0": str(tmp_path / "d" / "human.jsonl"),
                     "esnli-dhrd-rathuman3-s0": str(tmp_path / "d" / "human3.jsonl")}
    assert "rationales" not in run_args(grid, str(tmp_path / "root"), grid.runs[2])  # not a trainer argument
    prepare(grid, log=lambda m: None)
    task = get_task("esnli")
    train = task.read(tmp_path / "d" / "train.jsonl")
    one = read_rationales(tmp_path / "d" / "human.jsonl", task.labels)
    three = read_rationales(tmp_path / "d" / "human3.jsonl", task.labels)
    ex = train[0]
    assert one[ex.id].text == f"e1 {ex.id}" and one[ex.id].texts == ()
    assert three["4"].texts == ("e1 4", "e2 4")  # an empty explanation is left out, not an empty rationale
    items = attach_rationales(train, three, task.labels)
    assert all(it.rationale == f"e1 {it.example.id}" and len(it.alternatives) in (1, 2) for it in items)
    # --only picks runs by name; a pattern matching nothing is an error, not an empty success
    assert experiment_main(["list", str(tmp_path / "grid.yaml"), "--root", str(tmp_path / "root"),
                            "--only", "*rathuman*"]) == 0
    listed = capsys.readouterr().out
    assert "esnli-dhrd-rathuman-s0" in listed and "esnli-dhrd-rathuman3-s0" in listed and "pooled" not in listed
    assert experiment_main(["list", str(tmp_path / "grid.yaml"), "--only", "nothing*"]) == 2
    assert "no run of sources matches" in capsys.readouterr().err


def test_an_unknown_rationale_source_names_the_known_ones(tmp_path):
    (tmp_path / "grid.yaml").write_text(SOURCES_GRID.replace("[palm, human, human3]", "[palm, gemini]"))
    with pytest.raises(GridError, match="no rationale source 'gemini' \\(known: palm, human, human3\\)"):
        load_grid(str(tmp_path / "grid.yaml"))
