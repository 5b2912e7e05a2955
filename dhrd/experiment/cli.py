"""``dhrd experiment``: run a grid of (task x method x seed x overrides) through the real
engine and aggregate it into tables and plots.

    dhrd experiment list GRID.yaml                      the runs, which are done, which a harness holds
    dhrd experiment run GRID.yaml --root R [--jobs N]   run what is missing, then aggregate
    dhrd experiment run GRID.yaml --root R --slurm      submit a Slurm job array instead
    dhrd experiment run GRID.yaml --root R --slurm --dry_run   print the sbatch command only
    dhrd experiment aggregate GRID.yaml --root R        results.md / results.csv / plots/ / records.jsonl
    dhrd experiment aggregate GRID.yaml --root R --publish DIR   the same, also copied into DIR (to commit)

A finished run is kept in <root>/records.jsonl (its predictions, config and loss curves):
a root holding that file can lose its run directories, and a new root continues the grid
from a copy of it (cp DIR/records.jsonl NEWROOT/).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhrd experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("list", "run", "aggregate"):
        s = sub.add_parser(name)
        s.add_argument("grid", help="grid YAML file (experiments/*.yaml)")
        s.add_argument("--root", default=None, help="experiment root [results/<grid name> beside the grid file]")
        if name in ("list", "run"):
            s.add_argument("--only", action="append", default=None, metavar="GLOB",
                           help="only the runs whose name matches this glob (repeatable: any of them), e.g. "
                                "'esnli-*-n1000-*': the most informative block first, the rest later")
        if name == "run":
            s.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine")
            s.add_argument("--threads", type=int, default=None, help="CPU threads per run [cores / jobs]")
            s.add_argument("--index", type=int, default=None, help="only this run (a Slurm array task)")
            s.add_argument("--slurm", action="store_true", help="submit the grid as a Slurm job array")
            s.add_argument("--parallel", type=int, default=None, help="at most this many array tasks at once")
            s.add_argument("--dry_run", action="store_true", help="list the runs (and the sbatch command); run nothing")
            s.add_argument("--no_aggregate", action="store_true", help="skip aggregation after the runs")
        if name == "aggregate":
            s.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
            s.add_argument("--publish", default=None,
                           help="also copy results, plots and records.jsonl into this folder (e.g. to commit)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .grid import GridError, load_grid

    args = _parser().parse_args(argv)
    try:
        grid = load_grid(args.grid)
        root = args.root or os.path.join(os.path.dirname(grid.path), "results", grid.name)
        if getattr(args, "only", None):
            grid = select_runs(grid, args.only)
        return _command(args, grid, root)
    except GridError as e:  # a bad grid, a grid changed under its runs, a damaged records file
        print(f"dhrd experiment: {e}", file=sys.stderr)
        return 2


def _command(args, grid, root: str) -> int:
    from .runner import changed_args, claimed_by, is_done, progress, run_grid, slurm_command

    if args.cmd == "list" or (args.cmd == "run" and args.dry_run):
        for i, run in enumerate(grid.runs):
            state = "changed" if changed_args(grid, root, run) else "done" if is_done(root, run) else ""
            holder = "" if state == "done" else claimed_by(root, run)
            notes = [] if state == "done" else [x for x in (progress(root, run), holder and f"by {holder}") if x]
            print(f"{i:4d}  {state or ('claimed' if holder else ''):7s}  {run.name}"
                  + (f"  ({', '.join(notes)})" if notes else ""))
        print(f"{len(grid.runs)} runs in {grid.name} ({sum(is_done(root, r) for r in grid.runs)} done under {root})")
        if args.cmd == "run" and args.slurm:
            print("would submit: " + shlex.join(slurm_command(grid, root, args.grid, parallel=args.parallel)))
        return 0
    if args.cmd == "run" and args.slurm:
        cmd = slurm_command(grid, root, args.grid, parallel=args.parallel)
        os.makedirs(root, exist_ok=True)
        os.makedirs("logs", exist_ok=True)
        print(shlex.join(cmd))
        return subprocess.run(cmd).returncode
    if args.cmd == "run":
        if args.index is not None and not 0 <= args.index < len(grid.runs):
            print(f"dhrd experiment: --index {args.index} outside 0..{len(grid.runs) - 1}", file=sys.stderr)
            return 2
        outcomes = run_grid(grid, root, jobs=args.jobs, threads=args.threads, index=args.index,
                            log=lambda m: print(m, flush=True))
        failed = [o.run for o in outcomes if o.status == "failed"]
        busy = [o.run for o in outcomes if o.status == "busy"]
        if busy:
            print(f"{len(busy)} run(s) left to the harness that holds them: {', '.join(busy)}")
        if not args.no_aggregate:
            aggregate(grid, root)
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    aggregate(grid, root, n_boot=args.n_boot, publish=args.publish)
    return 0


def select_runs(grid, patterns: list[str]):
    """The grid with only the runs matching one of the glob patterns (an error when none
    does: a mistyped pattern must not look like a finished grid)."""
    import dataclasses
    import fnmatch

    from .grid import GridError

    runs = [r for r in grid.runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not runs:
        raise GridError(f"--only {' '.join(patterns)}: no run of {grid.name} matches (dhrd experiment list shows "
                        "their names)")
    return dataclasses.replace(grid, runs=runs)


def aggregate(grid, root: str, n_boot: int = 1000, publish: str | None = None) -> None:
    from .aggregate import publish_results, write_results
    from .plots import write_plots

    if publish:  # refused before any work when it would drop runs the folder holds
        publish_results(grid, root, publish, check_only=True)
    res = write_results(grid, root, n_boot=n_boot)
    files = write_plots(grid, root, res["variants"]) if res["variants"] else []
    print(res["markdown"])
    plots = f", {len(files)} plot(s) in {os.path.join(root, 'plots')}" if files else ""
    print(f"wrote {os.path.join(root, 'results.md')}, results.csv, records.jsonl" + plots)
    if publish:
        print(f"published into {publish_results(grid, root, publish)}")


if __name__ == "__main__":
    sys.exit(main())
