"""Run a grid through the real engine: one ``python dhrd/train.py --config run.yaml``
process per run, one output directory per run under the experiment root.

    <root>/grid.yaml             the grid as submitted (a later submit must be the same grid or grow it)
    <root>/runs/<name>/run.yaml  the run's full trainer arguments
    <root>/runs/<name>/...       the engine's own output (checkpoints, eval_predictions.jsonl, ...)
    <root>/runs/<name>/DONE      written after the run finished and evaluated: never rerun
    <root>/runs/<name>/train.log its stdout/stderr

Resumable at two levels: a finished run is skipped; an unfinished one is started again with
``--resume auto`` (the engine continues from its last checkpoint; set ``save_every`` in the
grid's ``common`` so that there is one). Runs go N at a time on one machine (threads split
between them), or one per Slurm array task (``index``). Several harnesses may share a root
(two machines on one file system, a local harness beside a Slurm array): each claims a run
(``<root>/runs/<name>/.dhrd-claim.lock``, naming its process or Slurm job) before starting
it and skips a run a live harness holds, so none is started twice; a dead holder's claim
is taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from ..engine.locks import OutputDirInUse, OutputDirLock, holder
from ..errors import DataError
from ..fileio import atomic_write, atomic_write_json, read_json_or_none
from ..jsonl import parse_line
from ..progress import duration, log_every, status_line
from .grid import PATH_KEYS, Grid, GridError, Run
from .prepare import prepare_task
from .records import DONE, collect_records, read_records, run_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLAIM = ".dhrd-claim.lock"


def is_done(root: str, run: Run) -> bool:
    """Finished: its directory says so, or the root's records.jsonl holds it (the run
    directory may be gone: a records file committed or copied from elsewhere)."""
    return os.path.exists(os.path.join(run_dir(root, run), DONE)) or run.name in read_records(root)


def claim(root: str, run: Run) -> OutputDirLock | None:
    """Take ``run`` for this harness until ``release()``; None when a live harness (this
    machine's pid, or a Slurm job) holds it."""
    try:
        return OutputDirLock(run_dir(root, run), name=CLAIM).acquire()
    except OutputDirInUse:
        return None


def claimed_by(root: str, run: Run) -> str | None:
    """'pid 123 on host' / 'Slurm job 45 on node' of a run's claim file, or None (no
    liveness check: a crashed holder's file stays until a harness takes it over)."""
    path = os.path.join(run_dir(root, run), CLAIM)
    if not os.path.exists(path):
        return None
    who, host = holder(path)
    return f"{who} on {host}"


def _train_rows(out: str, tail_bytes: int = 16384) -> list[dict]:
    """The training rows in the last ``tail_bytes`` of a run's metrics.jsonl, in order
    (a line cut by the seek or by a kill, or any other bad line, is left out: this is a
    progress display, never a reason to stop); [] before the first."""
    path = os.path.join(out, "metrics.jsonl")
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
            lines = f.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rec = parse_line(line, path, None)
        except DataError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == "train" and isinstance(rec.get("step"), int):
            rows.append(rec)
    return rows


def _total_steps(out: str) -> int | None:
    cfg = read_json_or_none(os.path.join(out, "config.json"))
    return (cfg.get("derived") or {}).get("total_steps") if isinstance(cfg, dict) else None


def progress(root: str, run: Run) -> str | None:
    """'step 120/252' of a started run (its last logged training step and the total its
    config.json planned), or None before its first step."""
    out = run_dir(root, run)
    rows = _train_rows(out, 4096)
    if not rows:
        return None
    total = _total_steps(out)
    return f"step {rows[-1]['step']}/{total}" if total else f"step {rows[-1]['step']}"


def live_status(root: str, run: Run, elapsed: float) -> str:
    """The harness's periodic line for an active run, from the tail of its metrics.jsonl
    (the run itself is silent): step/total, classification and LM loss, examples/s, ETA
    from the step rate of its latest rows."""
    out = run_dir(root, run)
    rows = _train_rows(out)
    if not rows:
        return f"starting (no step logged yet) | elapsed {duration(elapsed)}"
    for i in range(len(rows) - 1, 0, -1):  # this session's rows: a resume restarts the step count
        if rows[i - 1]["step"] >= rows[i]["step"]:
            rows = rows[i:]
            break
    first, last = rows[0], rows[-1]
    dt = float(last.get("time", 0)) - float(first.get("time", 0))
    rate = (last["step"] - first["step"]) / dt if dt > 0 else 0.0
    stats = {"cls": last.get("train/loss_cls"), "lm": last.get("train/loss_lm"),
             "ex/s": round(last["perf/samples_per_s"], 2) if "perf/samples_per_s" in last else None}
    total = _total_steps(out) or 0
    line = status_line("step", last["step"], total, stats, elapsed, rate)
    return line + (" | final evaluation" if total and last["step"] >= total else "")


def prepare(grid: Grid, log=print) -> None:
    """Carve the tasks' data (and import rationales) where the grid asks and it is missing."""
    for name, spec in grid.tasks.items():
        files = {k: spec.get(k) for k in ("train_file", "eval_file", "rationale_file")}
        info = prepare_task(name, spec, files)
        if info:
            log(f"prepared {name}: {json.dumps(info)}")


def run_args(grid: Grid, root: str, run: Run) -> dict:
    """The trainer arguments run.yaml holds for ``run``."""
    args = run.args(grid, run_dir(root, run))
    args.setdefault("eval_mode", "auto")
    args.setdefault("export_final", False)  # a grid compares dev scores; set it true to keep the weights
    args["resume"] = "auto"  # fresh when there is no checkpoint, continues otherwise
    return args


def write_run_config(grid: Grid, root: str, run: Run) -> str:
    import yaml

    out = run_dir(root, run)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "run.yaml")
    atomic_write(path, yaml.safe_dump(run_args(grid, root, run), sort_keys=True))
    return path


def _comparable(args: dict) -> dict:
    """Arguments as compared across checkouts: paths by file name (the same grid run from
    another clone or worktree names other absolute paths), the output directory not at all."""
    return {k: os.path.basename(v.rstrip("/")) if k in PATH_KEYS and isinstance(v, str) else v
            for k, v in args.items() if k != "output_dir"}


# where a run writes, not what it computes
_OUTPUT_KEYS = ("output_dir", "cache_dir", "tensorboard_dir")


def resolved_args(argv: list[str]) -> dict:
    """Every trainer field as train.py resolves ``argv`` (defaults and the --method preset
    filled in), flat: what a run's config.json records."""
    from dataclasses import asdict

    from ..config import apply_method, explicit_fields, parse_args

    *objs, _ = parse_args(argv)
    apply_method(objs[2], objs[1], explicit_fields(argv), objs[0])
    return {k: v for obj in objs for k, v in asdict(obj).items()}


def _started_config(root: str, run: Run) -> dict | None:
    """The resolved arguments a started run recorded (its config.json, or its record's
    where only the record is left), flat; None before it wrote one."""
    path = os.path.join(run_dir(root, run), "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    else:
        cfg = (read_records(root).get(run.name) or {}).get("config")
        if not isinstance(cfg, dict):
            return None
    return {k: v for sec in ("model", "data", "loss", "train") for k, v in (cfg.get(sec) or {}).items()}


def changed_args(grid: Grid, root: str, run: Run) -> dict[str, tuple]:
    """{argument: (as the run was started, as the grid gives it now)} for a run already
    started under ``root`` with other arguments; empty when it was not, or the same.
    Compared as resolved (config.json against what train.py would make of the grid's
    arguments now), so a changed default or --method preset counts, not only an edited
    grid; a field the run did not record (added to the trainer since) is not compared. A
    run not started yet is compared with the started seeds of its variant."""
    import yaml

    started = _started_config(root, run)
    if started is not None:
        return _resolved_diff(started, _resolve_now(grid, root, run), set(_OUTPUT_KEYS))
    path = os.path.join(run_dir(root, run), "run.yaml")
    if not os.path.exists(path):
        return _changed_from_siblings(grid, root, run)
    with open(path, encoding="utf-8") as f:  # stopped before config.json: compare the arguments as given
        old = _comparable(yaml.safe_load(f) or {})
    new = _comparable(run_args(grid, root, run))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _resolved_diff(started: dict, now: dict, skip: set[str]) -> dict[str, tuple]:
    """{field: (recorded, resolved now)} over the fields the started run recorded."""
    old = _comparable({k: v for k, v in started.items() if k not in skip})
    new = _comparable({k: v for k, v in now.items() if k in started and k not in skip})
    return {k: (old.get(k), new.get(k)) for k in sorted(old) if old.get(k) != new.get(k)}


def _resolve_now(grid: Grid, root: str, run: Run) -> dict:
    """What train.py would resolve the run's arguments to today."""
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(run_args(grid, root, run), f)
    try:
        return resolved_args(train_command(f.name)[2:])
    finally:
        os.unlink(f.name)


def _changed_from_siblings(grid: Grid, root: str, run: Run) -> dict[str, tuple]:
    """For a run not started yet: how it would resolve unlike the started seeds of its own
    variant (a default or preset changed in between would make one variant two recipes)."""
    for other in grid.runs:
        if other.variant != run.variant or other is run:
            continue
        started = _started_config(root, other)
        if started is None:
            continue
        diff = _resolved_diff(started, _resolve_now(grid, root, run), set(_OUTPUT_KEYS) | {"seed"})
        return {f"{k} (seed {other.seed} had it)": v for k, v in diff.items()}
    return {}


def refuse_changed_runs(grid: Grid, root: str, runs: list[Run]) -> None:
    """A grid edited after some of its runs started would mix two recipes under one name
    (a finished run is never rerun; an unfinished one would resume under new arguments)."""
    changed = [(r, c) for r in runs if (c := changed_args(grid, root, r))]
    if not changed:
        return
    shown = "; ".join(f"{r.name} (" + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in c.items()) + ")"
                      for r, c in changed[:5])
    more = f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
    raise GridError(f"{root}: {len(changed)} run(s) were started with other arguments than the grid now gives "
                    f"them: {shown}{more}. Their results would mix two recipes: use another --root, or delete "
                    f"those run directories to train them again")


def train_command(config_path: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, "dhrd", "train.py"), "--config", config_path, "--progress", "false"]


def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # each run is its own one-process job
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def finish(root: str, run: Run, returncode: int) -> bool:
    """Mark a run done when it exited cleanly with its evaluation written."""
    out = run_dir(root, run)
    ok = returncode == 0 and os.path.exists(os.path.join(out, "eval_predictions.jsonl"))
    if ok:
        atomic_write_json(os.path.join(out, DONE), {"finished": time.time(), "run": run.name})
        # the run is final: its checkpoints are only weight (resume needs them no more)
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    return ok


@dataclass
class Outcome:
    run: str
    status: str  # done (earlier), ok, failed, busy (another harness holds it)
    seconds: float = 0.0


def start(grid: Grid, root: str, run: Run, threads: int | None) -> subprocess.Popen:
    cfg = write_run_config(grid, root, run)
    log = open(os.path.join(run_dir(root, run), "train.log"), "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(train_command(cfg))}\n")
    log.flush()
    proc = subprocess.Popen(train_command(cfg), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(threads))
    proc._dhrd_log = log  # closed by the caller when the process ends
    return proc


def run_grid(grid: Grid, root: str, *, jobs: int = 1, threads: int | None = None, index: int | None = None,
             log=print) -> list[Outcome]:
    """Run what is not done yet, ``jobs`` at a time (``index``: only that run, for a Slurm
    array task). Returns an outcome per run considered."""
    root = os.path.abspath(root)  # the runs start in the repository: a relative root would move
    os.makedirs(root, exist_ok=True)
    record_grid(grid, root)
    prepare(grid, log)
    runs = grid.runs if index is None else [grid.runs[index]]
    refuse_changed_runs(grid, root, runs)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    outcomes: list[Outcome] = []
    pending = []
    for run in runs:
        if is_done(root, run):
            outcomes.append(Outcome(run.name, "done"))
        else:
            pending.append(run)
    log(f"{grid.name}: {len(runs)} runs, {len(runs) - len(pending)} done, {len(pending)} to run, "
        f"{jobs} at a time, {threads} threads each")
    active: list[tuple[Run, subprocess.Popen, float, OutputDirLock]] = []
    every, last_report = log_every(), time.time()
    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            lock = claim(root, run)
            if lock is None:
                log(f"skip {run.name}: another harness runs it ({claimed_by(root, run) or 'it just ended'}; "
                    f"if that holder died on another machine, remove {os.path.join(run_dir(root, run), CLAIM)})")
                outcomes.append(Outcome(run.name, "busy"))
                continue
            if is_done(root, run):  # another harness finished it after this one listed it
                lock.release()
                outcomes.append(Outcome(run.name, "done"))
                continue
            log(f"start {run.name}")
            try:
                active.append((run, start(grid, root, run, threads), time.time(), lock))
            except BaseException:
                lock.release()
                raise
        if not active:
            break
        time.sleep(0.5)
        if time.time() - last_report >= every:  # the runs are silent: one line per active run
            last_report = time.time()
            for run, _, t0, _ in active:
                log(f"  {run.name}: {live_status(root, run, last_report - t0)}")
        for item in list(active):
            run, proc, t0, lock = item
            if proc.poll() is None:
                continue
            active.remove(item)
            proc._dhrd_log.close()
            ok = finish(root, run, proc.returncode)
            lock.release()
            if ok:  # into <root>/records.jsonl at once: a lost machine keeps every finished run
                collect_records(grid, root)
            outcomes.append(Outcome(run.name, "ok" if ok else "failed", time.time() - t0))
            log(f"{'done' if ok else 'FAILED'} {run.name} ({time.time() - t0:.0f}s)"
                + ("" if ok else f": see {os.path.join(run_dir(root, run), 'train.log')}"))
    return outcomes


def record_grid(grid: Grid, root: str) -> None:
    """Keep the grid file in the root; refuse a different grid whose runs would mix in."""
    dst = os.path.join(root, "grid.yaml")
    with open(grid.path, encoding="utf-8") as f:
        text = f.read()
    names = os.path.join(root, "runs.json")
    if os.path.exists(names):
        with open(names) as f:
            old = json.load(f)
        if old.get("name") != grid.name:
            raise ValueError(f"{root} holds grid {old.get('name')!r}, not {grid.name!r}: use another --root")
    atomic_write(dst, text)  # array tasks record the grid at the same time: each replaces it whole
    atomic_write_json(names, {"name": grid.name, "runs": [r.name for r in grid.runs]})


def slurm_command(grid: Grid, root: str, grid_path: str, *, parallel: int | None = None) -> list[str]:
    """The ``sbatch --array`` command that runs every run of the grid as one array task
    (slurm/experiment_array.sh), same output tree; the harness skips finished runs."""
    n = len(grid.runs)
    spec = f"0-{n - 1}" + (f"%{parallel}" if parallel else "")
    cmd = ["sbatch", f"--array={spec}", f"--job-name=dhrd-{grid.name}"]
    for key, value in grid.slurm.items():  # any sbatch option; true: a flag without a value
        cmd.append(f"--{key}" if value is True else f"--{key}={value}")
    cmd += [os.path.join(REPO, "slurm", "experiment_array.sh"), os.path.abspath(grid_path), os.path.abspath(root)]
    return cmd
