"""The grid's pictures (PNG, matplotlib, no display needed):

* ``bars_<task>.png``: each variant's score, mean with a std error bar over seeds;
  every score plot draws the majority-class score (the floor) as a dashed line;
* ``learning_curve.png``: score against training-set size (``max_train_examples``), a
  line per method (the picture of Distilling Step-by-Step);
* ``alpha.png``: score against alpha (pooled drawn at alpha 0);
* ``loss_<task>.png``: training loss curves (classification term), mean over seeds, a panel
  per data/model setting (pooled beside the variants trained like it), read
  back from the runs' records (their TensorBoard event files, see records.py).
A plot whose axis the grid does not vary is not drawn. Returns the files written.
"""

from __future__ import annotations

import os
import statistics

from ..fileio import atomic_open
from .aggregate import LOSS_ONLY, baseline_key, signature
from .grid import Grid
from .records import read_records


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:  # a plot a reader opens mid-write is never half a PNG
        fig.savefig(f, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
    _plt().close(fig)
    return path


def _majority_line(ax, rows: list[dict], within: bool = False) -> float:
    """The majority-class score of the task of ``rows`` as a dashed line; returns it (x100).
    ``within``: only where it falls inside the plotted range (else named in a corner), so
    that a curve far above chance is not squashed to a flat line."""
    floor = 100 * rows[0].get("majority", float("nan"))
    if floor != floor:
        return 100.0
    lo, hi = ax.get_ylim()
    if within and not lo <= floor <= hi:
        ax.text(0.01, 0.01, f"majority class {floor:.1f}", transform=ax.transAxes, fontsize=7, color="#aa3333")
    else:
        ax.axhline(floor, color="#aa3333", linestyle="--", linewidth=1, label="majority class")
    return floor


METHOD_ORDER = {"pooled": 0, "dhrd": 1}  # then the ablations
METHOD_COLOR = {"pooled": "#888888", "dhrd": "#3b75af"}  # ablations: orange


def _bar_order(r: dict) -> tuple:
    """Bars grouped by data/model setting (the axes pooled shares), pooled first, then DHRD
    and its loss variants, then the ablations: each group reads as 'against its baseline'."""
    setting = tuple(sorted((k, str(v)) for k, v in r["axes"].items() if k not in LOSS_ONLY))
    return setting, METHOD_ORDER.get(r["method"], 2), r["variant"]


def bars(rows: list[dict], out_dir: str) -> list[str]:
    plt = _plt()
    files = []
    for task in sorted({r["task"] for r in rows}):
        rs = sorted((r for r in rows if r["task"] == task), key=_bar_order)
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rs) + 2), 4))
        names = [signature(r["variant"], task) for r in rs]
        ax.bar(range(len(rs)), [100 * r["mean"] for r in rs], yerr=[100 * r["std"] for r in rs], capsize=4,
               color=[METHOD_COLOR.get(r["method"], "#e08a2c") for r in rs])
        for i in range(1, len(rs)):  # a thin rule between data/model settings
            if _bar_order(rs[i])[0] != _bar_order(rs[i - 1])[0]:
                ax.axvline(i - 0.5, color="#cccccc", linewidth=0.8)
        # the scale follows the bars (differences of a point or two stay visible); the
        # majority-class line is drawn where it falls inside, else named in a corner
        lo = min(100 * (r["mean"] - r["std"]) for r in rs)
        ax.set_ylim(max(0, lo - 5), min(100, max(100 * (r["mean"] + r["std"]) for r in rs) + 3))
        _majority_line(ax, rs, within=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(rs)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("dev score (mean ± std over seeds)")
        ax.set_title(task)
        files.append(_save(fig, os.path.join(out_dir, f"bars_{task}.png")))
    return files


def _curve(rows, axis: str, out_path: str, xlabel: str, default=None, logx=False,
           companions: tuple[str, ...] = ()) -> str | None:
    """A line per (task, method and the other axes), x = the axis value. ``default(row)``
    gives x for a row without the axis (alpha: the method's preset, pooled = 0), and such
    rows join every line of their task with the same other axes. ``companions`` are axes
    that move with the x axis and do not split lines (epochs with the training-set size,
    where a grid keeps the number of steps equal across sizes)."""
    lines: dict[tuple, dict[float, tuple[float, float]]] = {}
    loose = []
    for r in rows:
        axes = {k: v for k, v in dict(r["axes"]).items() if k not in companions}
        if axis in axes:
            x = axes.pop(axis)
        elif default is not None and default(r) is not None:
            loose.append((r, float(default(r)), tuple(sorted(axes.items()))))
            continue
        else:
            continue
        key = (r["task"], "dhrd" if default else r["method"], tuple(sorted(axes.items())))
        lines.setdefault(key, {})[float(x)] = (100 * r["mean"], 100 * r["std"])
    for r, x, rest in loose:
        for (task, _, other), pts in lines.items():
            if task == r["task"] and other == rest:
                pts.setdefault(x, (100 * r["mean"], 100 * r["std"]))
    lines = {k: v for k, v in lines.items() if len(v) > 1}
    if not lines:
        return None
    plt = _plt()
    tasks = sorted({k[0] for k in lines})
    fig, axs = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axs[0], tasks):
        for (t, method, rest), pts in sorted(lines.items()):
            if t != task:
                continue
            xs = sorted(pts)
            label = method + "".join(f" {k}={v}" for k, v in rest)
            ax.errorbar(xs, [pts[x][0] for x in xs], yerr=[pts[x][1] for x in xs], marker="o", capsize=3,
                        label=label)
        _majority_line(ax, [r for r in rows if r["task"] == task], within=True)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dev score (mean ± std)")
        ax.set_title(task)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, out_path)


def _preset_alpha(row) -> float | None:
    from ..config import METHODS

    return METHODS[row["method"]]["alpha"] if row["method"] in ("dhrd", "pooled") else None


def _setting(run) -> str:
    """A run's data and model settings (its axes but the loss-only ones): the runs that
    share one are drawn in one panel, pooled beside the DHRD variants trained like it."""
    axes = [f"{k}={v}" for k, v in baseline_key(run)[2]]
    return ", ".join(axes) or "defaults"


def loss_curves(grid: Grid, root: str, out_dir: str, tag: str = "train/loss_cls") -> list[str]:
    """Per task one figure, one panel per data/model setting (so a panel holds a handful of
    lines), a line per variant: the mean over seeds, smoothed over ~4% of the run."""
    plt = _plt()
    records = read_records(root)
    files = []
    for task in sorted({r.task for r in grid.runs}):
        panels: dict[str, dict[str, list[list[tuple[int, float]]]]] = {}
        for run in grid.runs:
            rec = records.get(run.name)
            if run.task != task or rec is None:
                continue
            pts = [tuple(p) for p in (rec.get("curves") or {}).get(tag, [])]
            if pts:
                panels.setdefault(_setting(run), {}).setdefault(signature(run.variant, task), []).append(pts)
        if not panels:
            continue
        cols = min(3, len(panels))  # rows of at most three panels: readable at any grid size
        nrows = -(-len(panels) // cols)
        fig, axs = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4 * nrows), squeeze=False)
        for ax in axs.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (setting, curves) in zip(axs.flat, sorted(panels.items())):
            for name, runs in sorted(curves.items()):
                steps = sorted(set.intersection(*(set(s for s, _ in pts) for pts in runs)))
                vals = [statistics.mean(dict(pts)[s] for pts in runs) for s in steps]
                k = max(1, len(steps) // 25)
                smooth = [statistics.mean(vals[max(0, i - k):i + 1]) for i in range(len(vals))]
                ax.plot(steps, smooth, label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
                        linestyle="--" if name.startswith("pooled") else "-")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(f"{tag} (mean over seeds, smoothed)")
            ax.set_title(f"{task}: {setting}", fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        files.append(_save(fig, os.path.join(out_dir, f"loss_{task}.png")))
    return files


def write_plots(grid: Grid, root: str, rows: list[dict]) -> list[str]:
    out_dir = os.path.join(root, "plots")
    os.makedirs(out_dir, exist_ok=True)
    files = bars(rows, out_dir)
    for axis, name, label, default, logx, companions in (
            ("max_train_examples", "learning_curve.png", "training examples", None, True, ("epochs",)),
            ("alpha", "alpha.png", "alpha (pooled = 0)", _preset_alpha, False, ())):
        path = _curve(rows, axis, os.path.join(out_dir, name), label, default, logx, companions)
        if path:
            files.append(path)
    files += loss_curves(grid, root, out_dir)
    return files
