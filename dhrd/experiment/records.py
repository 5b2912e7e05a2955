"""A grid's finished runs in one small file, ``<root>/records.jsonl``: per run, one line
with its dev predictions (and labels), the configuration and provenance it recorded
(config.json) and its training-loss curves. Everything the aggregation and the plots
read is in it, so an experiment outlives its run directories (checkpoints and event
files on a scratch disk that is wiped, a machine that is replaced): commit records.jsonl
with results.md, and a fresh clone re-aggregates the grid and continues it, a recorded
run counting as done (``dhrd experiment run --root R`` where R holds the file).

About 10 KB a run (1500 dev examples; labels and predictions below 10 as one string of
digits, the loss curves at most 128 points): a few hundred runs stay a few MB.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

from ..errors import DataError
from ..fileio import atomic_write_lines, read_json_or_none
from ..jsonl import read_jsonl
from .grid import Grid, GridError

RECORDS = "records.jsonl"
DONE = "DONE"  # a finished run directory holds it
REQUIRED = ("run", "task", "method", "seed", "labels", "preds")
# the scalars kept from a run's TensorBoard files (plots.loss_curves draws the first),
# as at most CURVE_POINTS means over consecutive steps
CURVES = ("train/loss_cls", "train/loss_lm")
CURVE_POINTS = 128


class RecordsError(GridError, DataError):
    """A records file that cannot be read: names the file, line and field (a GridError,
    which ``dhrd experiment`` reports in one line)."""


def run_dir(root: str, run) -> str:
    return os.path.join(root, "runs", run.name)


@contextlib.contextmanager
def _records_lock(root: str):
    """An exclusive flock on ``<root>/records.lock`` for one read-update-write."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "records.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def records_path(root: str) -> str:
    return os.path.join(root, RECORDS)


def read_predictions(path: str) -> tuple[list[int], list[int], list | None]:
    """(labels, predictions, groups) from a run's eval_predictions.jsonl: the classifier's
    predictions, or the CoT decoder's where the run had no classifier (rationale_only)."""
    labels, preds, groups = [], [], []
    for _, row in read_jsonl(path):
        labels.append(row["label"])
        preds.append(row["pred"] if "pred" in row else row["cot_pred"])
        groups.append(row.get("group"))
    return labels, preds, (groups if any(g is not None for g in groups) else None)


def read_curves(tb_dir: str, tags=CURVES) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalars ``tags`` under ``tb_dir`` (those it
    has); a resumed run's redone steps keep their last value."""
    if not os.path.isdir(tb_dir):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    return {tag: sorted({e.step: e.value for e in acc.Scalars(tag)}.items()) for tag in tags if tag in have}


def thin(points: list[tuple[int, float]], n: int = CURVE_POINTS) -> list[list]:
    """At most ``n`` points: the mean of each run of consecutive points, at its last step
    (what a smoothed loss plot draws anyway), 4 significant digits."""
    k = -(-len(points) // n) if points else 1
    out = []
    for i in range(0, len(points), k):
        chunk = points[i:i + k]
        out.append([chunk[-1][0], float(f"{sum(v for _, v in chunk) / len(chunk):.4g}")])
    return out


def encode_ints(xs: list[int]) -> str | list[int]:
    """Labels or predictions that are all 0-9 as one string of digits (half the size of
    a JSON list); others as the list."""
    return "".join(map(str, xs)) if all(isinstance(x, int) and 0 <= x <= 9 for x in xs) else list(xs)


def decode_ints(v) -> list[int]:
    return [int(c) for c in v] if isinstance(v, str) else list(v)


def make_record(out: str, run) -> dict:
    """The record of a finished run from its output directory ``out`` (labels and
    predictions as lists: encoded only in the file)."""
    labels, preds, groups = read_predictions(os.path.join(out, "eval_predictions.jsonl"))
    done = read_json_or_none(os.path.join(out, DONE)) or {}
    curves = {tag: thin(pts) for tag, pts in read_curves(os.path.join(out, "tensorboard")).items()}
    return {"run": run.name, "task": run.task, "method": run.method, "seed": run.seed,
            "finished": done.get("finished"), "labels": labels, "preds": preds, "groups": groups,
            "config": read_json_or_none(os.path.join(out, "config.json")), "curves": curves}


_cache: dict[str, tuple[tuple, dict]] = {}


def read_records(root: str) -> dict[str, dict]:
    """{run name: record} of ``root``'s records file ({} without one). A line that is not
    a record is an error naming the file, line and field: a damaged file must not make
    finished runs look unfinished (they would be trained again, and their results lost)."""
    path = records_path(root)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    key = (st.st_mtime_ns, st.st_size)
    if path in _cache and _cache[path][0] == key:
        return _cache[path][1]
    out: dict[str, dict] = {}
    for lineno, rec in read_jsonl(path, error=RecordsError):
        if not isinstance(rec, dict):
            raise RecordsError(f"a record is a JSON object, not {type(rec).__name__}", path=path, line=lineno)
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise RecordsError(f"missing field(s) {', '.join(missing)}", path=path, line=lineno)
        try:
            rec["labels"], rec["preds"] = decode_ints(rec["labels"]), decode_ints(rec["preds"])
        except (TypeError, ValueError):
            raise RecordsError(f"run {rec['run']!r}: fields 'labels' and 'preds' must be lists of class indices or "
                               "strings of digits", path=path, line=lineno) from None
        if len(rec["preds"]) != len(rec["labels"]):
            raise RecordsError(f"run {rec['run']!r}: {len(rec['preds'])} predictions for {len(rec['labels'])} "
                               "labels", path=path, line=lineno, field="preds")
        if rec["run"] in out:
            raise RecordsError(f"run {rec['run']!r} is recorded twice", path=path, line=lineno)
        out[rec["run"]] = rec
    _cache[path] = (key, out)
    return out


def write_records(root: str, records: dict[str, dict], order: list[str]) -> str:
    """Write ``records`` (runs in ``order`` first, as the grid lists them, then any others:
    a run the grid no longer lists keeps its record), one line each, atomically."""
    names = [n for n in order if n in records] + sorted(n for n in records if n not in set(order))
    path = records_path(root)
    lines = (json.dumps({**records[n], "labels": encode_ints(records[n]["labels"]),
                         "preds": encode_ints(records[n]["preds"])}, separators=(",", ":"), sort_keys=True)
             for n in names)
    atomic_write_lines(path, lines)
    return path


def collect_records(grid: Grid, root: str) -> dict[str, dict]:
    """The root's records (records.jsonl) brought up to date with its finished run
    directories and written back: what the aggregation reads, and what survives the
    run directories. Under a lock on the root: Slurm array tasks and harnesses on other
    machines finish runs at the same time, and each would otherwise write back the file
    it read, without the others' runs."""
    with _records_lock(root):
        return _collect(grid, root)


def _collect(grid, root: str) -> dict[str, dict]:
    records = dict(read_records(root))
    changed = False
    for run in grid.runs:
        out = run_dir(root, run)
        if not os.path.exists(os.path.join(out, DONE)):
            continue
        finished = (read_json_or_none(os.path.join(out, DONE)) or {}).get("finished")
        rec = records.get(run.name)
        if finished is not None and rec is not None and rec.get("finished") == finished:
            continue  # recorded from this directory already (a finished run is never rerun)
        records[run.name] = make_record(out, run)
        changed = True
    if changed:
        write_records(root, records, [r.name for r in grid.runs])
    return records
