#!/usr/bin/env bash
#SBATCH --job-name=dhrd-boolq
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#
# DHRD on BoolQ:  sbatch [--nodes=N] slurm/train_boolq.sh [-- EXTRA ARGS]
# Submit from the repository root. Sets BoolQ defaults (each one can still be overridden
# from the environment, see slurm/train.sh) and hands over to the generic job script.
set -euo pipefail

REPO=${DHRD_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
export TASK=boolq
export TRAIN_FILE=${TRAIN_FILE-data/boolq/train.jsonl}
export EVAL_FILE=${EVAL_FILE-data/boolq/val.jsonl}
export RATIONALE_FILE=${RATIONALE_FILE-data/boolq/rationales.jsonl}
export MODEL=${MODEL:-smollm2}
# paper settings: effective batch 32, lr 2e-4, 3 epochs, cosine, 5 warmup steps (the
# trainer's defaults); a checkpoint every 200 steps bounds the work a hard kill loses
export EXTRA_ARGS="--method dhrd --save_every ${SAVE_EVERY:-200} ${EXTRA_ARGS:-}"
# exec, not source: train.sh's `set -euo pipefail` and traps then own this shell
exec bash "$REPO/slurm/train.sh" "$@"
