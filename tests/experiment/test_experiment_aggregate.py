"""Grid files, aggregation numbers and plots, on synthetic finished runs (no training):
each number of results.csv / results.json is recomputed here from the per-run predictions."""

from __future__ import annotations

import json
import os
import random
import statistics

import pytest

from dhrd.experiment.aggregate import paired_bootstrap, write_results
from dhrd.experiment.grid import GridError, Run, load_grid
from dhrd.experiment.plots import write_plots
from dhrd.experiment.records import RecordsError, read_curves, read_records
from dhrd.experiment.runner import DONE, run_dir, slurm_command

GRID = """
name: synth
model: smollm2
common: {{lr: 5.0e-5, epochs: 1}}
seeds: [0, 1, 2]
tasks:
  esnli: {{train_file: d/train.jsonl, eval_file: d/dev.jsonl, rationale_file: d/r.jsonl}}
  cb: {{train_file: "{cb_train}", eval_file: d/cb_dev.jsonl}}
blocks:
  - methods: [pooled, dhrd]
    axes: {{max_train_examples: [100, 400]}}
  - methods: [dhrd]
    axes: {{max_train_examples: [400], alpha: [0.3]}}
  - methods: [shuffled]
    tasks: [esnli]
    axes: {{max_train_examples: [400]}}
"""


def write_grid(tmp_path, **kw):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(cb_train=kw.get("cb_train", "d/cb_train.jsonl")))
    return path


def test_grid_expands_blocks_into_named_runs(tmp_path):
    grid = load_grid(str(write_grid(tmp_path)))
    names = [r.name for r in grid.runs]
    # 2 tasks x (2 methods x 2 sizes + 1 alpha variant) x 3 seeds + 1 x 3 shuffled
    assert len(names) == len(set(names)) == 2 * 5 * 3 + 3
    assert "esnli-dhrd-a0.3-n400-s2" in names and "cb-pooled-n100-s0" in names
    assert "cb-shuffled-n400-s0" not in names
    run = next(r for r in grid.runs if r.name == "esnli-dhrd-n100-s1")
    args = run.args(grid, "/out")
    assert args["train_file"] == str(tmp_path / "d" / "train.jsonl")  # relative to the grid file
    assert args["max_train_examples"] == 100 and args["seed"] == 1 and args["method"] == "dhrd"
    assert args["lr"] == 5e-5 and args["output_dir"] == "/out"
    # a switch axis is named by its key: on 'lora', off 'nolora'
    assert Run("esnli", "dhrd", 0, (("lora", True), ("lr", 2e-4))).name == "esnli-dhrd-lora-lr0.0002-s0"
    assert Run("esnli", "pooled", 1, (("lora", False),)).variant == "esnli-pooled-nolora"


@pytest.mark.parametrize("text,message", [
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a, eval_file: b}}\nblocks: [{methods: [dhrdd]}]\n",
     "unknown method 'dhrdd'"),
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a, eval_file: b}}\n"
     "blocks: [{methods: [dhrd], axes: {lrr: [1]}}]\n",
     "'lrr' is not a trainer argument"),
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a, eval_file: b}}\n"
     "blocks: [{methods: [dhrd], axes: {seed: [1]}}]\n",
     "set by the harness"),
    ("name: x\nmodel: m\ntasks: {nope: {train_file: a, eval_file: b}}\nblocks: [{methods: [dhrd]}]\n",
     "unknown task 'nope'"),
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a}}\nblocks: [{methods: [dhrd]}]\n", "missing 'eval_file'"),
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a, eval_file: b}}\npresets: {dhrdd: {alpha: 1}}\n"
     "blocks: [{methods: [dhrd]}]\n", "presets: unknown method 'dhrdd'"),
    ("name: x\nmodel: m\ntasks: {esnli: {train_file: a, eval_file: b}}\npresets: {dhrd: {alpah: 1}}\n"
     "blocks: [{methods: [dhrd]}]\n", "presets.dhrd: 'alpah' is not a trainer argument"),
    ("name: x\nmodel: a: b\n", "grid.yaml:2: not valid YAML"),
])
def test_bad_grid_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(GridError, match=message.replace("[", r"\[")) as e:
        load_grid(str(path))
    assert str(path) in str(e.value)


def test_environment_variables_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MYDATA", "/data/x")
    grid = load_grid(str(write_grid(tmp_path, cb_train="${MYDATA}/cb.jsonl")))
    run = next(r for r in grid.runs if r.task == "cb")
    assert dict(run.files)["train_file"] == "/data/x/cb.jsonl"
    monkeypatch.delenv("MYDATA")
    with pytest.raises(GridError, match="MYDATA is not set"):
        load_grid(str(write_grid(tmp_path, cb_train="${MYDATA}/cb.jsonl")))
    grid = load_grid(str(write_grid(tmp_path, cb_train="${MYDATA:-/fallback}/cb.jsonl")))
    assert dict(next(r for r in grid.runs if r.task == "cb").files)["train_file"] == "/fallback/cb.jsonl"


def fake_runs(grid, root, n_eval=300, accuracy=None):
    """Finished runs with predictions: pooled right 70% of the time, dhrd variants 75%
    (or ``accuracy(run)``)."""
    rng = random.Random(0)
    labels = {t: [rng.randrange(3) for _ in range(n_eval)] for t in grid.tasks}
    for run in grid.runs:
        out = run_dir(root, run)
        os.makedirs(out, exist_ok=True)
        p = accuracy(run) if accuracy else 0.70 if run.method == "pooled" else 0.75
        r = random.Random(hash(run.name) % 1000)
        with open(os.path.join(out, "eval_predictions.jsonl"), "w") as f:
            for i, y in enumerate(labels[run.task]):
                pred = y if r.random() < p else (y + 1) % 3
                f.write(json.dumps({"id": str(i), "label": y, "pred": pred}) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(os.path.join(out, "tensorboard"))
        for step in range(1, 11):
            w.add_scalar("train/loss_cls", 1.0 / step + (0.1 if run.method == "pooled" else 0.0), step)
        w.close()
        open(os.path.join(out, DONE), "w").write("{}")
    return labels


def _acc(path):
    rows = [json.loads(x) for x in open(path)]
    return sum(r["pred"] == r["label"] for r in rows) / len(rows), rows


def test_aggregation_recomputed_from_the_runs(tmp_path):
    from dhrd.data.tasks import get_task

    grid = load_grid(str(write_grid(tmp_path)))
    root = str(tmp_path / "root")
    labels = fake_runs(grid, root)
    res = write_results(grid, root, n_boot=200)
    rows = {(r["task"], r["variant"]): r for r in res["variants"]}
    # per variant: mean and std over seeds of the task score (CB: mean of accuracy and macro F1)
    for (task, variant), row in rows.items():
        scores = []
        for seed in (0, 1, 2):
            rs = [json.loads(x) for x in open(os.path.join(root, "runs", f"{variant}-s{seed}",
                                                            "eval_predictions.jsonl"))]
            m = get_task(task).score([r["pred"] for r in rs], [r["label"] for r in rs])
            scores.append(statistics.mean(m.values()))
        assert row["scores"] == pytest.approx(scores)
        assert row["mean"] == pytest.approx(statistics.mean(scores))
        assert row["std"] == pytest.approx(statistics.stdev(scores))
    gaps = {(g["task"], g["variant"]): g for g in res["gaps"]}
    g = gaps[("esnli", "esnli-dhrd-a0.3-n400")]
    assert g["baseline"] == "esnli-pooled-n400"  # alpha does not apply to pooled: same size, same seed
    per_seed = [rows[("esnli", "esnli-dhrd-a0.3-n400")]["scores"][s] - rows[("esnli", "esnli-pooled-n400")]["scores"][s]
                for s in range(3)]
    assert g["gap_per_seed"] == pytest.approx(per_seed)
    assert g["gap"] == pytest.approx(statistics.mean(per_seed))
    base = rows[("esnli", "esnli-pooled-n400")]["mean"]
    assert g["relative_gain_pct"] == pytest.approx(100 * statistics.mean(per_seed) / base)
    assert g["ci_low"] <= g["gap"] <= g["ci_high"] and g["ci_high"] - g["ci_low"] > 0
    assert ("esnli", "esnli-shuffled-n400") in gaps and ("cb", "cb-shuffled-n400") not in gaps
    avg = {a["variant"]: a for a in res["average"]}["dhrd-n100"]
    assert avg["tasks"] == ["cb", "esnli"]
    assert avg["relative_gain_pct"] == pytest.approx(statistics.mean(
        gaps[(t, f"{t}-dhrd-n100")]["relative_gain_pct"] for t in ("cb", "esnli")))
    csv_rows = open(os.path.join(root, "results.csv")).read().splitlines()
    assert len(csv_rows) == 1 + len(grid.runs)
    # the ablations and DHRD's loss variants also against DHRD at the same size and seed
    vs = {(g["task"], g["variant"]): g for g in res["vs_dhrd"]}
    assert sorted(vs) == [("cb", "cb-dhrd-a0.3-n400"), ("esnli", "esnli-dhrd-a0.3-n400"),
                          ("esnli", "esnli-shuffled-n400")]
    g = vs[("esnli", "esnli-shuffled-n400")]
    assert g["baseline"] == "esnli-dhrd-n400"
    per_seed = [rows[("esnli", "esnli-shuffled-n400")]["scores"][s] - rows[("esnli", "esnli-dhrd-n400")]["scores"][s]
                for s in range(3)]
    assert g["gap_per_seed"] == pytest.approx(per_seed) and g["ci_low"] <= g["gap"] <= g["ci_high"]
    # the majority-class floor: the score of always predicting the dev split's most common label
    y = labels["esnli"]
    top = max(set(y), key=y.count)
    assert rows[("esnli", "esnli-pooled-n100")]["majority"] == pytest.approx(y.count(top) / len(y))
    md = open(os.path.join(root, "results.md")).read()
    assert "| esnli | dhrd-a0.3-n400 | pooled-n400 |" in md
    assert "| esnli | shuffled-n400 | dhrd-n400 |" in md
    assert f"| esnli | {len(y)} | {100 * y.count(top) / len(y):.2f} | " in md
    # every fake method scores 70-75% against a ~33% floor: both tasks are above chance,
    # and the average over them equals the average over all tasks
    assert all(r["task_above_chance"] for r in res["variants"])
    assert avg["tasks_above_chance"] == ["cb", "esnli"] and avg["gap_above_chance"] == pytest.approx(avg["gap"])

    files = write_plots(grid, root, res["variants"])
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["alpha.png", "bars_cb.png", "bars_esnli.png", "learning_curve.png", "loss_cb.png",
                     "loss_esnli.png"]
    for f in files:
        assert os.path.getsize(f) > 5000 and open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert read_curves(os.path.join(root, "runs", "cb-pooled-n100-s0", "tensorboard"))["train/loss_cls"][0] == \
        (1, pytest.approx(1.1))


def test_records_keep_the_results_when_run_directories_are_lost(tmp_path):
    """records.jsonl holds each finished run's predictions and loss curves: the same
    results and plots without the run directories; recorded runs count as done; a run
    the grid no longer lists keeps its record; a damaged file names its line."""
    from dhrd.experiment.runner import is_done

    grid = load_grid(str(write_grid(tmp_path)))
    root = str(tmp_path / "root")
    fake_runs(grid, root)
    first = write_results(grid, root, n_boot=100)
    recs = read_records(root)
    assert sorted(recs) == sorted(r.name for r in grid.runs)
    rec = recs["esnli-dhrd-n100-s1"]
    preds = [json.loads(x) for x in open(os.path.join(root, "runs", "esnli-dhrd-n100-s1", "eval_predictions.jsonl"))]
    assert rec["preds"] == [p["pred"] for p in preds] and rec["labels"] == [p["label"] for p in preds]
    assert rec["curves"]["train/loss_cls"][9] == [10, pytest.approx(0.1)]  # 10 steps: all kept
    assert f'"preds":"{"".join(str(p["pred"]) for p in preds)}"' in open(os.path.join(root, "records.jsonl")).read()
    md = open(os.path.join(root, "results.md")).read()

    import shutil

    shutil.rmtree(os.path.join(root, "runs"))
    again = write_results(grid, root, n_boot=100)
    assert again["gaps"] == first["gaps"] and again["variants"] == first["variants"]
    assert open(os.path.join(root, "results.md")).read() == md
    assert all(is_done(root, r) for r in grid.runs)
    files = write_plots(grid, root, again["variants"])
    assert sum(os.path.basename(f).startswith("loss_") for f in files) == 2

    # a smaller grid: the records of the runs it drops stay in the file
    small = tmp_path / "small" / "grid.yaml"
    small.parent.mkdir()
    small.write_text(open(write_grid(tmp_path)).read().replace("[100, 400]", "[100]"))
    os.makedirs(os.path.join(root, "runs", "esnli-pooled-n100-s0"))  # one run finished again here
    fake_runs(load_grid(str(small)), root)
    write_results(load_grid(str(small)), root, n_boot=50)
    assert sorted(read_records(root)) == sorted(r.name for r in grid.runs)

    path = os.path.join(root, "records.jsonl")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[:3] + [lines[3][: len(lines[3]) // 2]] + lines[4:]) + "\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:4: malformed JSON"):
        write_results(grid, root, n_boot=50)
    open(path, "w").write("\n".join(lines[:1] + ['{"run": "x", "task": "esnli"}']) + "\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:2: missing field\(s\) method, seed, labels, preds"):
        is_done(root, next(r for r in grid.runs if "n400" in r.name))  # (no run directory left)


def test_dhrd_against_the_strongest_pooled_on_the_same_data(tmp_path):
    """A DHRD variant whose pooled twin is weak is also compared with the best pooled
    variant of the same training set (here the linear head's), paired per seed."""
    path = tmp_path / "grid.yaml"
    path.write_text("""
name: heads
model: smollm2
seeds: [0, 1, 2]
tasks:
  esnli: {train_file: d/train.jsonl, eval_file: d/dev.jsonl, rationale_file: d/r.jsonl}
blocks:
  - methods: [pooled, dhrd]
    axes: {max_train_examples: [100, 400]}
  - methods: [pooled, dhrd]
    axes: {max_train_examples: [400], head: [linear]}
  - methods: [dhrd]
    axes: {max_train_examples: [400], alpha: [0.3]}
""")
    grid = load_grid(str(path))
    root = str(tmp_path / "root")
    acc = {"esnli-pooled-n400": 0.6, "esnli-pooled-headlinear-n400": 0.8}
    fake_runs(grid, root, accuracy=lambda run: acc.get(run.variant, 0.7))
    res = write_results(grid, root, n_boot=200)
    scores = {r["variant"]: r["scores"] for r in res["variants"]}
    best = {g["variant"]: g for g in res["vs_best_pooled"]}
    # n100 has one pooled variant (the twin); the linear-head DHRD's twin is the best one
    assert sorted(best) == ["esnli-dhrd-a0.3-n400", "esnli-dhrd-n400"]
    for variant, g in best.items():
        assert g["baseline"] == "esnli-pooled-headlinear-n400"
        per_seed = [a - b for a, b in zip(scores[variant], scores["esnli-pooled-headlinear-n400"])]
        assert g["gap_per_seed"] == pytest.approx(per_seed) and g["ci_low"] <= g["gap"] <= g["ci_high"]
        assert g["gap"] < 0  # 70% against 80%
    assert json.load(open(os.path.join(root, "results.json")))["vs_best_pooled"][0]["variant"] == \
        "esnli-dhrd-a0.3-n400"
    assert "| esnli | dhrd-n400 | pooled-headlinear-n400 |" in open(os.path.join(root, "results.md")).read()


def test_a_task_no_method_learns_is_left_out_of_the_average_above_chance(tmp_path):
    """CB at chance (every run predicts the majority label or random labels), e-SNLI
    learned: the plain average mixes both, the average above chance is e-SNLI's gap."""
    grid = load_grid(str(write_grid(tmp_path)))
    root = str(tmp_path / "root")
    fake_runs(grid, root, accuracy=lambda run: 0.34 if run.task == "cb" else
              0.70 if run.method == "pooled" else 0.75)
    res = write_results(grid, root, n_boot=100)
    above = {r["task"]: r["task_above_chance"] for r in res["variants"]}
    assert above == {"cb": False, "esnli": True}
    gaps = {(g["task"], g["variant"]): g["gap"] for g in res["gaps"]}
    avg = {a["variant"]: a for a in res["average"]}["dhrd-n100"]
    assert avg["tasks"] == ["cb", "esnli"] and avg["tasks_above_chance"] == ["esnli"]
    assert avg["gap"] == pytest.approx((gaps[("cb", "cb-dhrd-n100")] + gaps[("esnli", "esnli-dhrd-n100")]) / 2)
    assert avg["gap_above_chance"] == pytest.approx(gaps[("esnli", "esnli-dhrd-n100")])
    md = open(os.path.join(root, "results.md")).read()
    assert "no: its gaps are noise around chance" in md and "| dhrd-n100 | cb, esnli | " in md


def test_results_name_the_code_that_trained_each_run(tmp_path):
    """results.csv carries each run's git commit (a resumed run: every start's, in
    order); results.md counts the runs per commit, so a grid that spans code changes says so."""
    import csv

    grid = load_grid(str(write_grid(tmp_path)))
    root = str(tmp_path / "root")
    fake_runs(grid, root)
    env = lambda commit, dirty=False: {"git": {"commit": commit, "dirty": dirty}}  # noqa: E731
    with open(os.path.join(root, "runs", "esnli-dhrd-n100-s0", "config.json"), "w") as f:
        json.dump({"environment": env("b" * 40, True), "earlier_starts": [env("a" * 40)]}, f)
    with open(os.path.join(root, "runs", "esnli-dhrd-n100-s1", "config.json"), "w") as f:
        json.dump({"environment": {"git": None}, "earlier_starts": []}, f)
    write_results(grid, root, n_boot=50)
    code = {r["variant"] + "-s" + r["seed"]: r["code"] for r in csv.DictReader(open(os.path.join(root, "results.csv")))}
    assert code["esnli-dhrd-n100-s0"] == "a" * 10 + " > " + "b" * 10 + "-dirty"
    assert code["esnli-dhrd-n100-s1"] == "no git" and code["esnli-dhrd-n100-s2"] == "unrecorded"
    md = open(os.path.join(root, "results.md")).read()
    assert f"{'a' * 10} > {'b' * 10}-dirty (1), no git (1), unrecorded ({len(grid.runs) - 2})." in md


def test_paired_bootstrap_sees_a_real_difference_and_no_difference():
    from dhrd.data.tasks import get_task
    from dhrd.experiment.aggregate import RunResult

    rng = random.Random(1)
    labels = [rng.randrange(3) for _ in range(1000)]
    same = [y if rng.random() < 0.7 else (y + 1) % 3 for y in labels]
    better = [y if (p == y or rng.random() < 0.5) else p for y, p in zip(labels, same)]  # fixes half the errors
    mk = lambda preds: RunResult(None, labels, preds, None, 0.0)  # noqa: E731
    task = get_task("esnli")
    lo, hi = paired_bootstrap([(mk(better), mk(same))], task, n_boot=300)
    assert lo > 0.1
    lo, hi = paired_bootstrap([(mk(same), mk(same))], task, n_boot=100)
    assert lo == hi == 0.0


def test_slurm_array_command_covers_every_run(tmp_path):
    grid = load_grid(str(write_grid(tmp_path)))
    cmd = slurm_command(grid, str(tmp_path / "root"), str(tmp_path / "grid.yaml"), parallel=4)
    assert cmd[0] == "sbatch" and f"--array=0-{len(grid.runs) - 1}%4" in cmd
    assert cmd[-3].endswith("slurm/experiment_array.sh") and cmd[-1] == str(tmp_path / "root")


def test_the_shipped_grids_load_and_dry_run(capsys):
    from dhrd.experiment.cli import main

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paper = load_grid(os.path.join(repo, "experiments", "gpu_paper.yaml"))
    tasks = {r.task for r in paper.runs}
    assert tasks == {"boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"}
    assert {r.method for r in paper.runs} == {"pooled", "dhrd_paper", "dhrd", "label_only", "shuffled",
                                              "rationale_only"}
    # the CPU grids' dhrd runs were trained at alpha 1, constant: pinned, whatever the preset says now
    for name in ("cpu_small", "cpu_gold"):
        grid = load_grid(os.path.join(repo, "experiments", f"{name}.yaml"))
        plain = [r.args(grid, "/o") for r in grid.runs
                 if r.method == "dhrd" and not {"alpha", "alpha_schedule"} & set(dict(r.overrides))]
        assert plain and all((a["alpha"], a["alpha_schedule"]) == (1.0, "constant") for a in plain)
    run = paper.runs[0]
    args = run.args(paper, "/o")
    assert args["lora"] is True and args["lr"] == 2e-4 and args["ds_config"].endswith("ds_configs/zero2.json")
    assert main(["run", os.path.join(repo, "experiments", "gpu_paper.yaml"), "--slurm", "--dry_run",
                 "--root", "/nonexistent/root"]) == 0
    out = capsys.readouterr().out
    assert f"{len(paper.runs)} runs in gpu_paper" in out
    assert f"would submit: sbatch --array=0-{len(paper.runs) - 1} " in out and "--gpus-per-node=1" in out
    cpu = load_grid(os.path.join(repo, "experiments", "cpu_small.yaml"))
    assert {r.task for r in cpu.runs} == {"esnli", "cqa", "anli1"} and all(len(r.seed.__str__()) for r in cpu.runs)
    sizes = {dict(r.overrides).get("max_train_examples") for r in cpu.runs if r.method in ("pooled", "dhrd")}
    assert len(sizes) >= 2
    # tools/run_experiments.py is the same command under its tools/ name
    import subprocess
    import sys

    out = subprocess.run([sys.executable, os.path.join(repo, "tools", "run_experiments.py"), "list",
                          os.path.join(repo, "experiments", "gpu_paper.yaml"), "--root", "/nonexistent/root"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"{len(paper.runs)} runs in gpu_paper" in out.stdout, out.stderr[-2000:]


def test_learning_curve_joins_sizes_trained_for_equal_steps(tmp_path):
    """A grid that trains a small set for more epochs (equal steps) still draws one line
    per method across sizes; without the companion rule each size was a line alone."""
    from dhrd.experiment.plots import _curve

    rows = [{"task": "esnli", "method": m, "axes": axes, "mean": 0.5 + 0.1 * i, "std": 0.01}
            for m in ("pooled", "dhrd")
            for i, axes in enumerate([{"max_train_examples": 250, "epochs": 4}, {"max_train_examples": 1000}])]
    args = ("max_train_examples", str(tmp_path / "lc.png"), "training examples", None, True)
    assert _curve(rows, *args) is None
    assert _curve(rows, *args, companions=("epochs",)) == str(tmp_path / "lc.png")


def test_publish_copies_results_and_refuses_to_drop_recorded_runs(tmp_path, capsys):
    """``aggregate --publish DIR`` leaves DIR with the results, plots and records (what a
    fresh clone needs to re-aggregate and continue); a DIR recording runs the root lacks
    is refused before anything is written; a damaged records file is a clear error."""
    from dhrd.experiment.cli import main

    grid_path = write_grid(tmp_path)
    grid = load_grid(str(grid_path))
    root, dest = str(tmp_path / "root"), str(tmp_path / "published")
    fake_runs(grid, root)
    assert main(["aggregate", str(grid_path), "--root", root, "--publish", dest, "--n_boot", "50"]) == 0
    assert open(os.path.join(dest, "grid.yaml")).read() == grid_path.read_text()
    for name in ("results.md", "results.csv", "results.json", "records.jsonl", "plots/bars_cb.png"):
        assert open(os.path.join(dest, name), "rb").read() == open(os.path.join(root, name), "rb").read(), name
    # a new root that lost half of the runs may not publish over the full record
    other = str(tmp_path / "other")
    half = load_grid(str(grid_path))
    fake_runs(half, other)
    import shutil

    for run in half.runs[: len(half.runs) // 2]:
        shutil.rmtree(run_dir(other, run))
    before = open(os.path.join(dest, "records.jsonl")).read()
    assert main(["aggregate", str(grid_path), "--root", other, "--publish", dest, "--n_boot", "50"]) == 2
    err = capsys.readouterr().err
    assert f"holds {len(half.runs) // 2} finished run(s) that {other} does not" in err and "Traceback" not in err
    assert open(os.path.join(dest, "records.jsonl")).read() == before and not os.path.exists(
        os.path.join(other, "results.md"))
    # continuing from the published records: copied into the new root, every run is done
    shutil.copyfile(os.path.join(dest, "records.jsonl"), os.path.join(other, "records.jsonl"))
    assert main(["list", str(grid_path), "--root", other]) == 0
    assert f"({len(grid.runs)} done under {other})" in capsys.readouterr().out
    with open(os.path.join(other, "records.jsonl"), "a") as f:
        f.write("{not json\n")
    assert main(["list", str(grid_path), "--root", other]) == 2
    err = capsys.readouterr().err
    assert f"records.jsonl:{len(grid.runs) + 1}: malformed JSON" in err and "Traceback" not in err


def test_record_curves_are_thinned_to_bucket_means_and_labels_round_trip():
    from dhrd.experiment.records import decode_ints, encode_ints, thin

    pts = [(s, float(s)) for s in range(1, 257)]
    out = thin(pts, 128)
    assert len(out) == 128 and out[0] == [2, 1.5] and out[-1] == [256, 255.5]
    assert thin(pts[:100], 128) == [[s, v] for s, v in pts[:100]] and thin([], 128) == []
    assert len(thin(pts[:129], 128)) == 65  # buckets of 2: never more than asked
    assert encode_ints([0, 2, 1]) == "021" and decode_ints("021") == [0, 2, 1]
    assert encode_ints([3, 12]) == [3, 12] and decode_ints([3, 12]) == [3, 12]
