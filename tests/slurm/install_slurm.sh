#!/usr/bin/env bash
# Installs the Slurm daemons, client and munge from the Debian archive so that
# tests/slurm can start a real local cluster. Idempotent (does nothing when the
# binaries are already there) and quiet (apt's chatter goes to a log file).
# Needs root and apt (CI has both); without them, or when apt has no such packages,
# it says so and exits 0, and the tests skip. A failing apt-get install exits 1.
# Usage: bash tests/slurm/install_slurm.sh
set -euo pipefail

need=(slurmctld slurmd sbatch srun scontrol squeue munged munge)
missing=0
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing=1; done
[ "$missing" = 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install_slurm.sh: not root, cannot apt-get install slurm-wlm munge (tests/slurm will skip)" >&2
  exit 0   # not an error: the tests skip with this reason
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm.sh: no apt-get (not Debian/Ubuntu), cannot install slurm-wlm munge (tests/slurm will skip)" >&2
  exit 0
fi

log=${TMPDIR:-/tmp}/install_slurm.log
pkgs=(slurm-wlm slurmctld slurmd slurm-client munge)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >"$log" 2>&1 || echo "install_slurm.sh: apt-get update failed (see $log)" >&2
# no candidate for a package (no Debian archive reachable, an archive without Slurm):
# the install is impossible here, not broken; say so and let the tests skip
for p in "${pkgs[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
    echo "install_slurm.sh: apt has no installable package $p (no reachable Debian archive?), cannot install slurm-wlm munge (tests/slurm will skip)" >&2
    tail -5 "$log" >&2
    exit 0
  fi
done
# --no-install-recommends: the recommends pull in mail and X11 packages we do not need
if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1; then
  echo "install_slurm.sh: apt-get install failed, see $log:" >&2
  tail -20 "$log" >&2
  exit 1
fi
echo "install_slurm.sh: installed ${pkgs[*]}" >&2
