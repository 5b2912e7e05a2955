"""``dhrd experiment``: run a grid of (task x method x seed x overrides) through the real
engine and aggregate it into tables and plots.

    dhrd experiment list GRID.yaml                      the runs, which are done, which a harness holds
    dhrd experiment run GRID.yaml --root R [--jobs N]   run what is missing, then aggregate
    dhrd experiment run GRID.yaml --root R --slurm      submit a Slurm job array instead
    dhrd experiment run GRID.yaml --root R --slurm --dry_run   print the sbatch command only
    dhrd experiment aggregate GRID.yaml --root R        results.md / results.csv / plots/
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
    return p


def main(argv: list[str] | None = None) -> int:
    from .grid import GridError, load_grid
    from .runner import changed_args, claimed_by, is_done, progress, run_grid, slurm_command

    args = _parser().parse_args(argv)
    try:
        grid = load_grid(args.grid)
    except GridError as e:
        print(f"dhrd experiment: {e}", file=sys.stderr)
        return 2
    root = args.root or os.path.join(os.path.dirname(grid.path), "results", grid.name)
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
        try:
            outcomes = run_grid(grid, root, jobs=args.jobs, threads=args.threads, index=args.index,
                                log=lambda m: print(m, flush=True))
        except GridError as e:
            print(f"dhrd experiment: {e}", file=sys.stderr)
            return 2
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
    aggregate(grid, root, n_boot=args.n_boot)
    return 0


def aggregate(grid, root: str, n_boot: int = 1000) -> None:
    from .aggregate import write_results
    from .plots import write_plots

    res = write_results(grid, root, n_boot=n_boot)
    files = write_plots(grid, root, res["variants"]) if res["variants"] else []
    print(res["markdown"])
    plots = f", {len(files)} plot(s) in {os.path.join(root, 'plots')}" if files else ""
    print(f"wrote {os.path.join(root, 'results.md')}, results.csv" + plots)


if __name__ == "__main__":
    sys.exit(main())
