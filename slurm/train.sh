#!/usr/bin/env bash
#SBATCH --job-name=dhrd
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#
# Generic DHRD training job, 1..N nodes (see slurm/README.md).
#
#   sbatch [--nodes=N] slurm/train.sh TASK [CONFIG] [-- EXTRA TRAINER ARGS...]
#   NODES=N slurm/train.sh TASK [CONFIG] ...     (outside a job: submits itself with sbatch)
#
# Submit from the repository root (or set DHRD_REPO): sbatch runs a copy of this file.
# One Slurm task per node (srun) runs slurm/launch_node.sh, which starts that node's
# processes with torchrun. Preemption: Slurm sends USR1 to this shell 120 s before the
# time limit (B: = batch shell only); we forward it to the training processes, which save
# a checkpoint at the next step boundary and exit; then we requeue the job, and the rerun
# continues from the checkpoint (--resume auto, same output dir: the job id is kept).
#
# Environment overrides (defaults in brackets):
#   TASK            task name, or the first argument
#   CONFIG          JSON/YAML trainer config passed as --config, or the second argument []
#   MODEL           HF model dir or 'smollm2' [smollm2]
#   TRAIN_FILE EVAL_FILE RATIONALE_FILE   [data/$TASK/train.jsonl, val.jsonl, rationales.jsonl]
#                   (set EVAL_FILE= or RATIONALE_FILE= to empty to leave them out)
#   DS_CONFIG       DeepSpeed JSON [ds_configs/zero3.json]
#   OUTPUT_DIR      [outputs/$TASK-$SLURM_JOB_ID]; reuse one to continue a run in a new job
#   EXTRA_ARGS      more trainer arguments, word-split (also: arguments after --)
#   ENV_SETUP       shell code run first on the batch node and on every node, e.g.
#                   'source ~/venvs/dhrd/bin/activate' or 'module load cuda; conda activate dhrd'
#   NPROC_PER_NODE  processes per node [GPUS_PER_NODE, else SLURM_GPUS_ON_NODE, else the
#                   GPUs nvidia-smi lists, else 1]; on CPU-only nodes set it explicitly
#   MASTER_ADDR MASTER_PORT   rendezvous [first node of the job, 29500 + job id % 20000]
#   MAX_REQUEUES    stop requeueing after this many restarts [20]
#   DHRD_REPO       repository root [$SLURM_SUBMIT_DIR]
#   NODES           node count when this script submits itself [1]
set -euo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
  # not in a job: submit this script (the #SBATCH lines above apply; NODES sets the count)
  mkdir -p logs   # Slurm does not create the --output directory; a missing one loses the log
  exec sbatch --nodes="${NODES:-1}" "$0" "$@"
fi

REPO=${DHRD_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$REPO"
[ -n "${ENV_SETUP:-}" ] && eval "$ENV_SETUP"

extra=()
if [ $# -gt 0 ] && [ "$1" != "--" ]; then TASK=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then CONFIG=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; extra=("$@"); fi
: "${TASK:?give the task as the first argument or TASK=...}"
MODEL=${MODEL:-smollm2}
TRAIN_FILE=${TRAIN_FILE-data/$TASK/train.jsonl}
EVAL_FILE=${EVAL_FILE-data/$TASK/val.jsonl}
RATIONALE_FILE=${RATIONALE_FILE-data/$TASK/rationales.jsonl}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero3.json}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/$TASK-$SLURM_JOB_ID}
MAX_REQUEUES=${MAX_REQUEUES:-20}
mkdir -p "$OUTPUT_DIR"

# --resume auto: a fresh job finds no checkpoint and starts at step 0; a requeued one
# (or a new job on the same OUTPUT_DIR) continues from the newest complete checkpoint
args=(--task "$TASK" --model "$MODEL" --train_file "$TRAIN_FILE" --ds_config "$DS_CONFIG"
      --output_dir "$OUTPUT_DIR" --resume auto --progress false)
[ -n "${CONFIG:-}" ] && args+=(--config "$CONFIG")
[ -n "$EVAL_FILE" ] && args+=(--eval_file "$EVAL_FILE")
[ -n "$RATIONALE_FILE" ] && args+=(--rationale_file "$RATIONALE_FILE")
# shellcheck disable=SC2206  # EXTRA_ARGS is documented as word-split
[ -n "${EXTRA_ARGS:-}" ] && args+=($EXTRA_ARGS)
args+=(${extra[@]+"${extra[@]}"})

echo "[train.sh] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_NNODES} node(s) ${SLURM_JOB_NODELIST}: ${args[*]}"
started=$(date +%s)

# The signal arrives at this shell only (--signal=B:...; or scancel --batch). Forward it
# to the job's steps: every process of the step gets it, launch_node.sh and torchrun
# ignore it, the trainers note it and stop at the next step boundary.
forward() {
  echo "[train.sh] got SIG$1: asking the trainers to checkpoint and stop"
  scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

export ENV_SETUP
# --kill-on-bad-exit: one node failing takes the others down instead of hanging in a collective
srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash "$REPO/slurm/launch_node.sh" "${args[@]}" &
srun_pid=$!
# `wait` returns early (status > 128) when a trapped signal arrives: wait again until
# srun itself is gone, then take its exit status
rc=0
while :; do
  wait "$srun_pid" && rc=0 || rc=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done
trap - USR1 TERM

# Requeue only when this run's trainers wrote the marker for a USR1 (time-limit warning).
# A TERM (scancel) leaves its checkpoint but no requeue: the user asked the job to end.
if python - "$OUTPUT_DIR/preempted.json" "$SLURM_JOB_ID" "$started" <<'PY'
import json, os, sys
path, job, started = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    marker, mtime = json.load(open(path)), os.path.getmtime(path)
except (OSError, ValueError):
    sys.exit(1)
sys.exit(0 if marker.get("signal") == "SIGUSR1" and marker.get("slurm_job_id") == job
         and mtime >= started - 1 else 1)
PY
then
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
    echo "[train.sh] preempted, but already restarted $SLURM_RESTART_COUNT times (MAX_REQUEUES): not requeueing"
    exit 1
  fi
  echo "[train.sh] checkpoint written after the signal; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "[train.sh] training exited with status $rc"
exit "$rc"
