#!/usr/bin/env bash
#SBATCH --job-name=dhrd-grid
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%A_%a.out
#SBATCH --requeue
#SBATCH --open-mode=append
#
# One run of an experiment grid per array task (dhrd experiment run GRID --slurm submits
# this with --array=0-<runs-1>; see dhrd/experiment/runner.py).
#
#   sbatch --array=0-N slurm/experiment_array.sh GRID.yaml ROOT
#
# Every array task writes into the same output tree ROOT/runs/<run name>; a run already
# finished (ROOT/runs/<name>/DONE) is skipped, an unfinished one resumes (--resume auto),
# so resubmitting the array after a failure or preemption only redoes what is missing.
# After the array: dhrd experiment aggregate GRID.yaml --root ROOT (tables and plots).
#
# Environment: ENV_SETUP (shell code run first, e.g. 'source ~/venvs/dhrd/bin/activate'),
# DHRD_REPO (repository root [$SLURM_SUBMIT_DIR]), PYTHON [python].
set -euo pipefail
GRID=${1:?usage: sbatch --array=0-N slurm/experiment_array.sh GRID.yaml ROOT}
ROOT=${2:?usage: sbatch --array=0-N slurm/experiment_array.sh GRID.yaml ROOT}
REPO=${DHRD_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ -n "${ENV_SETUP:-}" ]; then eval "$ENV_SETUP"; fi
cd "$REPO"
INDEX=${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array}
exec env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m dhrd.experiment.cli run "$GRID" \
    --root "$ROOT" --index "$INDEX" --jobs 1 --threads "${SLURM_CPUS_PER_TASK:-1}" --no_aggregate
