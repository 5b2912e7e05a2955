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
# DHRD on BoolQ, from nothing:  TEACHER_MODEL=DIR sbatch [--nodes=N] slurm/train_boolq.sh [-- EXTRA ARGS]
# Submit from the repository root. Sets BoolQ defaults (each one can still be overridden
# from the environment, see slurm/train.sh) and hands over to the generic job script,
# which runs the whole path in the job:
#   1. rationales: BoolQ ships none. When RATIONALE_FILE is missing, the teacher
#      (TEACHER_MODEL: a local model dir; with TEACHER_URL, an OpenAI-compatible
#      endpoint's model) writes them in gold mode, resumably (a killed or requeued job
#      generates only what is missing), then their consistency report is printed. No
#      teacher: the job stops within seconds saying what to set.
#   2. training (--method dhrd), checkpoints every SAVE_EVERY steps, progress lines in the log;
#   3. export (EXPORT=all): $OUTPUT_DIR/export/lean, and export/hf where the head allows.
# Data: local files, or the hub (TRAIN_FILE=hub:train EVAL_FILE=hub:validation, needs
# network and the datasets package on the node).
set -euo pipefail

REPO=${DHRD_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
export TASK=boolq
export TRAIN_FILE=${TRAIN_FILE-data/boolq/train.jsonl}
export EVAL_FILE=${EVAL_FILE-data/boolq/val.jsonl}
export RATIONALE_FILE=${RATIONALE_FILE-data/boolq/rationales.jsonl}
export MODEL=${MODEL:-smollm2}
export EXPORT=${EXPORT:-all}
# paper settings: effective batch 32, lr 2e-4, 3 epochs, cosine, 5 warmup steps (the
# trainer's defaults); a checkpoint every 200 steps bounds the work a hard kill loses
export EXTRA_ARGS="--method dhrd --save_every ${SAVE_EVERY:-200} ${EXTRA_ARGS:-}"
# exec, not source: train.sh's `set -euo pipefail` and traps then own this shell
exec bash "$REPO/slurm/train.sh" "$@"
