"""Aggregate a grid's finished runs into ``results.csv`` and ``results.md``.

Per task and variant (method + axis values): the score's mean +- std over seeds. Per
variant against its pooled baseline (same task, same seed, same data/training axes; the
loss-only axes such as alpha do not apply to pooled): the gap per seed, its mean, a 95%
paired bootstrap interval (resampling seeds, and examples within each seed, the same
examples for both runs), and the relative gain as the DHRD paper computes it. The same
against DHRD at the same settings for the ablations (label_only, shuffled,
rationale_only) and for DHRD with a changed loss axis (alpha, its schedule, ...): the
question those variants ask is whether they beat DHRD, not pooled. Each DHRD variant
also against the strongest pooled classifier of the grid trained on the same data and
steps (any head or other recipe axis): a gain over a weak twin is not a gain. Per task, the score
of always predicting the dev split's most common label, the floor every method must
clear. The score is the task's metric, or the mean of its metrics where it has several
(CB: accuracy and F1; MultiRC: F1a and EM), as in the paper. Tasks scored per group (MultiRC's EM) are
resampled by group.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import random
import shutil
import statistics
from dataclasses import dataclass, field

from ..fileio import atomic_copy, atomic_open, atomic_write, atomic_write_json
from .grid import Grid, GridError, Run
from .records import DONE, RECORDS, collect_records, read_records, run_dir

# axes that do not change a pooled run (alpha 0, no LM term): the pooled baseline of a
# run is found with these left out
LOSS_ONLY = {"alpha", "beta", "lm_sections", "rationale_fraction", "label_consistency", "rationale_mode",
             "alpha_schedule", "alpha_floor", "alpha_switch_fraction", "loss_impl", "label_smoothing", "z_loss"}


# axes that set the labelled data and the training budget: a DHRD variant is compared with
# the best pooled variant that shares them (its other axes are recipe choices pooled may make too)
BUDGET_AXES = {"max_train_examples", "epochs", "max_steps", "global_batch_size", "train_file"}


@dataclass
class RunResult:
    run: Run
    labels: list[int]
    preds: list[int]
    groups: list | None
    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    code: str = "unrecorded"  # the git commit(s) that trained it (config.json's environment)


def task_score(task, preds, labels, groups) -> tuple[float, dict]:
    metrics = task.score(preds, labels, groups)
    return sum(metrics[m] for m in task.metrics) / len(task.metrics), metrics


def load_results(grid: Grid, root: str) -> list[RunResult]:
    from ..data.tasks import get_task

    records = collect_records(grid, root)
    out = []
    for run in grid.runs:
        rec = records.get(run.name)
        if rec is None:
            continue
        score, metrics = task_score(get_task(run.task), rec["preds"], rec["labels"], rec.get("groups"))
        out.append(RunResult(run, rec["labels"], rec["preds"], rec.get("groups"), score, metrics,
                             code=run_code(rec.get("config"))))
    return out


def run_code(cfg: dict | None) -> str:
    """'<commit 10>' (+ '-dirty') of the code that trained a run (its config.json, as
    recorded), earlier starts of a resumed run first ('a1b2c3d4e5 > f6...'); 'unrecorded'
    for runs older than the record."""
    if not isinstance(cfg, dict):
        return "unrecorded"
    names = []
    for env in [*(cfg.get("earlier_starts") or []), cfg.get("environment")]:
        git = (env or {}).get("git")
        name = "unrecorded" if env is None else "no git" if git is None else \
            git["commit"][:10] + ("-dirty" if git.get("dirty") else "")
        if not names or names[-1] != name:
            names.append(name)
    return " > ".join(names)


def baseline_key(run: Run) -> tuple:
    return run.task, run.seed, tuple((k, v) for k, v in run.overrides if k not in LOSS_ONLY)


def majority_score(task, labels: list[int], groups) -> float:
    """The score of predicting the dev split's most common label for every example."""
    top = max(sorted(set(labels)), key=labels.count)
    return task_score(task, [top] * len(labels), labels, groups)[0]


def _units(groups, n):
    """Resampling units: groups where the task scores per group, else single examples."""
    if groups is None:
        return [[i] for i in range(n)]
    by: dict = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    return list(by.values())


def paired_bootstrap(pairs: list[tuple[RunResult, RunResult]], task, n_boot: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean (over seeds) score gap a - b: seeds resampled, and within
    a seed the same examples (or groups) for both runs."""
    rng = random.Random(seed)
    units = [_units(a.groups, len(a.labels)) for a, _ in pairs]
    gaps = []
    for _ in range(n_boot):
        total = 0.0
        for _ in range(len(pairs)):
            k = rng.randrange(len(pairs))
            a, b = pairs[k]
            idx = [i for _ in range(len(units[k])) for i in units[k][rng.randrange(len(units[k]))]]
            sub = lambda r: task_score(task, [r.preds[i] for i in idx], [r.labels[i] for i in idx],  # noqa: E731
                                       None if r.groups is None else [r.groups[i] for i in idx])[0]
            total += sub(a) - sub(b)
        gaps.append(total / len(pairs))
    gaps.sort()
    return gaps[int(0.025 * n_boot)], gaps[min(n_boot - 1, int(math.ceil(0.975 * n_boot)) - 1)]


def _std(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(results: list[RunResult], n_boot: int = 1000) -> tuple[list[dict], list[dict], list[dict]]:
    """(per-variant rows, gap rows against pooled, gap rows of the ablations and DHRD loss
    variants against DHRD)."""
    from ..data.tasks import get_task

    by_variant: dict[tuple, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault((r.run.task, r.run.variant), []).append(r)
    rows = []
    for (task, variant), rs in sorted(by_variant.items()):
        scores = [r.score for r in sorted(rs, key=lambda r: r.run.seed)]
        rows.append({"task": task, "variant": variant, "method": rs[0].run.method,
                     "axes": dict(rs[0].run.overrides), "seeds": [r.run.seed for r in rs], "n": len(rs),
                     "mean": statistics.mean(scores), "std": _std(scores), "scores": scores,
                     "n_eval": len(rs[0].labels),
                     "majority": majority_score(get_task(task), rs[0].labels, rs[0].groups)})
    pooled = {baseline_key(r.run): r for r in results if r.run.method == "pooled"}
    dhrd = {baseline_key(r.run): r for r in results if r.run.method == "dhrd" and not _loss_axes(r.run)}
    gaps, vs_dhrd = [], []
    for (task, variant), rs in sorted(by_variant.items()):
        method = rs[0].run.method
        if method != "pooled":
            gaps += _compare(task, variant, rs, pooled, n_boot)
        if method in ("label_only", "shuffled", "rationale_only") or (method == "dhrd" and _loss_axes(rs[0].run)):
            vs_dhrd += _compare(task, variant, rs, dhrd, n_boot)
    return rows, gaps, vs_dhrd


def _loss_axes(run: Run) -> list[str]:
    return [k for k, _ in run.overrides if k in LOSS_ONLY]


def _compare(task: str, variant: str, rs: list[RunResult], baselines: dict, n_boot: int) -> list[dict]:
    """[the gap row of variant against its baseline runs (same seed, same data axes)], or []."""
    from ..data.tasks import get_task

    pairs = [(r, baselines[baseline_key(r.run)]) for r in rs if baseline_key(r.run) in baselines]
    if not pairs:
        return []
    for a, b in pairs:
        if a.labels != b.labels:
            raise ValueError(f"{a.run.name} and {b.run.name} were evaluated on different examples")
    per_seed = [a.score - b.score for a, b in pairs]
    base = statistics.mean(b.score for _, b in pairs)
    lo, hi = paired_bootstrap(pairs, get_task(task), n_boot=n_boot)
    return [{"task": task, "variant": variant, "baseline": pairs[0][1].run.variant,
             "seeds": [a.run.seed for a, _ in pairs], "gap_per_seed": per_seed,
             "gap": statistics.mean(per_seed), "gap_std": _std(per_seed), "ci_low": lo, "ci_high": hi,
             "relative_gain_pct": 100.0 * statistics.mean(per_seed) / base if base else float("nan"),
             "wins": sum(g > 0 for g in per_seed)}]


def vs_best_pooled(results: list[RunResult], rows: list[dict], n_boot: int = 1000) -> list[dict]:
    """Each DHRD variant against the pooled variant with the highest mean score among those
    with its task and budget axes, where that is not its own pooled twin (already compared).
    The best is chosen on the same dev split, which favours pooled: a DHRD gain that
    survives it is not an artefact of a weak baseline."""
    mean = {(r["task"], r["variant"]): r["mean"] for r in rows}

    def budget(run: Run) -> tuple:
        return run.task, tuple((k, v) for k, v in run.overrides if k in BUDGET_AXES)

    best: dict[tuple, str] = {}
    for r in results:
        if r.run.method == "pooled":
            b, v = budget(r.run), r.run.variant
            if b not in best or mean[(r.run.task, v)] > mean[(r.run.task, best[b])]:
                best[b] = v
    by_variant: dict[tuple, list[RunResult]] = {}
    for r in results:
        if r.run.method == "dhrd":
            by_variant.setdefault((r.run.task, r.run.variant), []).append(r)
    out = []
    for (task, variant), rs in sorted(by_variant.items()):
        top = best.get(budget(rs[0].run))
        chosen = {r.run.seed: r for r in results if r.run.variant == top}
        if not chosen or any(baseline_key(p.run) == baseline_key(rs[0].run) for p in chosen.values()):
            continue  # no pooled run on this data, or the best is its twin (compared above)
        out += _compare(task, variant, rs, {baseline_key(r.run): chosen[r.run.seed] for r in rs
                                            if r.run.seed in chosen}, n_boot)
    return out


def signature(variant: str, task: str) -> str:
    """A variant's name without its task: what is averaged over tasks."""
    return variant[len(task) + 1:]


def chance_levels(results: list[RunResult], rows: list[dict], n_perm: int = 20) -> dict[str, float]:
    """Per task, the chance level of its best variant: the score of that variant's own
    predictions shuffled across the dev examples (same label distribution, no link to
    the input; averaged over permutations and seeds). The majority class is not the
    floor for every metric: a macro F1 rewards spreading predictions over labels. A task
    whose best variant does not clear its chance level by two binomial standard errors
    says nothing about DHRD: its gaps are noise around chance, and averaged with other
    tasks they hide or fake an effect."""
    from ..data.tasks import get_task

    chance: dict[str, float] = {}
    for task in sorted({r["task"] for r in rows}):
        best = max((r for r in rows if r["task"] == task), key=lambda r: r["mean"])
        scores = []
        for res in (r for r in results if r.run.task == task and r.run.variant == best["variant"]):
            rng = random.Random(res.run.seed)
            for _ in range(n_perm):
                preds = list(res.preds)
                rng.shuffle(preds)
                scores.append(task_score(get_task(task), preds, res.labels, res.groups)[0])
        chance[task] = statistics.mean(scores)
    return chance


def _above(row: dict) -> bool:
    se = math.sqrt(max(row["mean"] * (1 - row["mean"]), 1e-12) / max(row["n_eval"], 1))
    return row["mean"] - row["chance"] > 2 * se


def average_over_tasks(gaps: list[dict], learned: dict[str, bool] | None = None) -> list[dict]:
    """Per variant signature, the mean gap and relative gain over tasks; with ``learned``
    also over the tasks above chance only."""
    by: dict[str, list[dict]] = {}
    for g in gaps:
        by.setdefault(signature(g["variant"], g["task"]), []).append(g)
    out = []
    for sig, gs in sorted(by.items()):
        row = {"variant": sig, "tasks": [g["task"] for g in gs],
               "relative_gain_pct": statistics.mean(g["relative_gain_pct"] for g in gs),
               "gap": statistics.mean(g["gap"] for g in gs)}
        if learned is not None:
            above = [g for g in gs if learned.get(g["task"])]
            row["tasks_above_chance"] = [g["task"] for g in above]
            row["gap_above_chance"] = statistics.mean(g["gap"] for g in above) if above else None
            row["relative_gain_pct_above_chance"] = (statistics.mean(g["relative_gain_pct"] for g in above)
                                                     if above else None)
        out.append(row)
    return out


def write_results(grid: Grid, root: str, n_boot: int = 1000) -> dict:
    results = load_results(grid, root)
    rows, gaps, vs_dhrd = summarize(results, n_boot=n_boot)
    vs_best = vs_best_pooled(results, rows, n_boot=n_boot)
    chance = chance_levels(results, rows)
    for r in rows:
        r["chance"] = chance[r["task"]]
    # a task is above chance when one of its variants (then its best) is
    learned = {t: any(_above(r) for r in rows if r["task"] == t) for t in chance}
    for r in rows:
        r["task_above_chance"] = learned[r["task"]]
    avg = average_over_tasks(gaps, learned)
    with atomic_open(os.path.join(root, "results.csv")) as f:
        w = csv.writer(f)
        w.writerow(["task", "variant", "method", "axes", "seed", "score", "metrics", "n_eval", "code"])
        for r in sorted(results, key=lambda r: (r.run.task, r.run.variant, r.run.seed)):
            w.writerow([r.run.task, r.run.variant, r.run.method, json.dumps(dict(r.run.overrides)), r.run.seed,
                        f"{r.score:.6f}", json.dumps(r.metrics), len(r.labels), r.code])
    md = format_markdown(grid, rows, gaps, avg, n_done=len(results), vs_dhrd=vs_dhrd, vs_best=vs_best,
                         code=collections.Counter(r.code for r in results))
    atomic_write(os.path.join(root, "results.md"), md)
    atomic_write_json(os.path.join(root, "results.json"), {"variants": rows, "gaps": gaps, "average": avg,
                                                           "vs_dhrd": vs_dhrd, "vs_best_pooled": vs_best})
    return {"variants": rows, "gaps": gaps, "average": avg, "vs_dhrd": vs_dhrd, "vs_best_pooled": vs_best,
            "markdown": md}


PUBLISHED = ("results.md", "results.csv", "results.json", RECORDS)


def publish_results(grid: Grid, root: str, dest: str, check_only: bool = False) -> str:
    """Copy a root's results, plots and records into ``dest`` (a folder to commit, beside
    the grid file). Refused when ``dest`` records runs that the root does not: the copy
    would drop them."""
    have = set(read_records(root)) | {r.name for r in grid.runs if os.path.exists(os.path.join(run_dir(root, r), DONE))}
    lost = sorted(set(read_records(dest)) - have)
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        raise GridError(f"{os.path.join(dest, RECORDS)} holds {len(lost)} finished run(s) that {root} does not "
                        f"({shown}): publishing would drop them. Bring them into the root first (where "
                        f"{os.path.join(root, RECORDS)} is missing: copy the file there), then aggregate again")
    if check_only:
        return dest
    os.makedirs(dest, exist_ok=True)
    for name in PUBLISHED:
        if os.path.exists(os.path.join(root, name)) and os.path.abspath(root) != os.path.abspath(dest):
            atomic_copy(os.path.join(root, name), os.path.join(dest, name))
    if not os.path.exists(os.path.join(dest, "grid.yaml")) or not os.path.samefile(grid.path,
                                                                                   os.path.join(dest, "grid.yaml")):
        atomic_copy(grid.path, os.path.join(dest, "grid.yaml"))  # the grid these results are of
    src, dst = os.path.join(root, "plots"), os.path.join(dest, "plots")
    if os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(dst):
        shutil.rmtree(dst, ignore_errors=True)  # the plots of this aggregation, no stale ones
        shutil.copytree(src, dst)
    return dest


def _gap_table(title: str, gaps: list[dict], pct) -> list[str]:
    lines = ["", f"## {title}", "",
             "| task | variant | vs | gap mean (per seed) | 95% paired bootstrap | relative gain | wins |",
             "|---|---|---|---|---|---|---|"]
    for g in gaps:
        lines.append(f"| {g['task']} | {signature(g['variant'], g['task'])} | "
                     f"{signature(g['baseline'], g['task'])} | {pct(g['gap'])} "
                     f"({' / '.join(pct(x) for x in g['gap_per_seed'])}) | "
                     f"[{pct(g['ci_low'])}, {pct(g['ci_high'])}] | {g['relative_gain_pct']:+.2f}% | "
                     f"{g['wins']}/{len(g['seeds'])} |")
    return lines


def format_markdown(grid: Grid, rows, gaps, avg, n_done: int, vs_dhrd=(), vs_best=(), code=None) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = [f"# {grid.name}: results", "",
             f"{n_done} of {len(grid.runs)} runs finished. Backbone: `{grid.model}`. Score: the task metric "
             "(the mean of its metrics where it has several), on the dev split, x100. Majority class: the "
             "score of predicting the dev split's most common label everywhere. Chance: the score of the "
             "best variant's own predictions shuffled across the dev examples; above chance: its mean "
             "clears that by more than two binomial standard errors.", "",
             *(["Code (git commit that trained the runs, and how many): "
                + ", ".join(f"{k} ({v})" for k, v in sorted(code.items())) + ".", ""] if code else []),
             "| task | dev examples | majority class | best variant | chance (its predictions shuffled) "
             "| above chance |", "|---|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        best = max(rs, key=lambda r: r["mean"])
        above = rs[0].get("task_above_chance")
        lines.append(f"| {task} | {best['n_eval']} | {pct(best['majority'])} | "
                     f"{pct(best['mean'])} ({signature(best['variant'], task)}) | "
                     f"{pct(best['chance']) if 'chance' in best else '?'} | "
                     f"{'?' if above is None else 'yes' if above else 'no: its gaps are noise around chance'} |")
    lines += ["", "| task | variant | seeds | score mean ± std | per seed |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {signature(r['variant'], r['task'])} | {r['n']} | "
                     f"{pct(r['mean'])} ± {pct(r['std'])} | {' / '.join(pct(s) for s in r['scores'])} |")
    if gaps:
        lines += _gap_table("Against the pooled baseline (paired: same seed, same examples)", gaps, pct)
        lines += ["", "## Average over tasks", "",
                  "| variant | tasks | gap | relative gain | tasks above chance | gap | relative gain |",
                  "|---|---|---|---|---|---|---|"]
        for a in avg:
            above = a.get("tasks_above_chance") or []
            lines.append(f"| {a['variant']} | {', '.join(a['tasks'])} | {pct(a['gap'])} | "
                         f"{a['relative_gain_pct']:+.2f}% | {', '.join(above) or 'none'} | "
                         + (f"{pct(a['gap_above_chance'])} | {a['relative_gain_pct_above_chance']:+.2f}% |"
                            if above else "- | - |"))
    if vs_dhrd:
        lines += _gap_table("Against DHRD at the same settings (ablations and loss variants; paired)", vs_dhrd, pct)
    if vs_best:
        lines += _gap_table("Against the strongest pooled classifier on the same data (the best pooled variant "
                            "at the same training set and steps, chosen on this dev split: this favours pooled)",
                            vs_best, pct)
    n = len(gaps) + len(vs_dhrd) + len(vs_best)
    if n:
        lines += ["", "An interval that contains 0 means the difference is within the noise of this grid. "
                  f"These tables hold {n} comparisons: even with no real difference anywhere, about "
                  f"{n / 20:.1f} of their 95% intervals would exclude 0 by chance."]
    return "\n".join(lines) + "\n"
