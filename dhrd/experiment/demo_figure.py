"""The main job's picture: each method's training losses over the steps (classification,
and DHRD's LM term) beside the held-out accuracy bars with the paired DHRD - pooled
interval, from the grid root's records. One PNG a newcomer opens to see what ran."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

from .plots import _plt, _save
from .records import read_records

COLORS = {"pooled": "#888888", "dhrd": "#3b75af"}


def _mean_curve(records: list[dict], tag: str) -> list[tuple[int, float]]:
    """The mean over seeds of a loss curve (steps every seed has)."""
    curves = [dict(map(tuple, r["curves"].get(tag) or [])) for r in records]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [(s, statistics.mean(c[s] for c in curves)) for s in steps]


def machine() -> str:
    """'2 x AMD EPYC 9R14' style: what a figure's numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} x {model}"


def stamp(command: str) -> str:
    """The line a figure carries: date, hardware, command."""
    return f"{time.strftime('%Y-%m-%d')} | {machine()} | {command}"


def demo_figure(root: str, res: dict, path: str, *, title: str) -> str:
    """Write the PNG to ``path``: losses (left), held-out accuracy and the gap (right)."""
    plt = _plt()
    records = list(read_records(root).values())
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for method in ("pooled", "dhrd"):
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        cls = _mean_curve(rs, "train/loss_cls")
        if cls:
            ax_loss.plot(*zip(*cls), color=COLORS[method], label=f"{method}: classification loss")
        lm = _mean_curve(rs, "train/loss_lm") if method == "dhrd" else []
        if lm:
            ax_loss.plot(*zip(*lm), color=COLORS[method], linestyle=":", label="dhrd: LM (rationale) loss")
    n_labels = len({lab for r in records for lab in r["labels"]}) or 3
    ax_loss.axhline(math.log(n_labels), color="#cc6666", linewidth=0.8, linestyle="--",
                    label=f"chance (ln {n_labels})")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss (mean over seeds)")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    rows = {r["method"]: r for r in res["variants"]}
    names = [m for m in ("pooled", "dhrd") if m in rows]
    means = [100 * rows[m]["mean"] for m in names]
    ax_acc.bar(names, means, color=[COLORS[m] for m in names])
    for i, m in enumerate(names):
        ax_acc.text(i, means[i] + 0.5, f"{means[i]:.1f}", ha="center", fontsize=9)
    majority = rows[names[0]].get("majority") if names else None
    if majority is not None:
        ax_acc.axhline(100 * majority, color="#cc6666", linewidth=0.8, linestyle="--", label="majority class")
        ax_acc.legend(fontsize=8, loc="lower right")
    gap = next(iter(res["gaps"]), None)
    if gap:
        ax_acc.set_title(f"DHRD - pooled {100 * gap['gap']:+.2f} points\n95% paired interval "
                         f"[{100 * gap['ci_low']:+.2f}, {100 * gap['ci_high']:+.2f}]", fontsize=9)
    ax_acc.set_ylabel("held-out accuracy (%)")
    ax_acc.set_ylim(0, 100)
    fig.suptitle(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return _save(fig, path)
