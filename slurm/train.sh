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
#   TEACHER_MODEL   when RATIONALE_FILE is set but missing: the teacher that generates it
#                   first, inside this job (gold mode, resumable; see slurm/README.md): a
#                   local HF model dir, or with TEACHER_URL the endpoint's model name
#   TEACHER_URL     an OpenAI-compatible endpoint (vllm serve, transformers serve), e.g.
#                   http://host:8000/v1 []
#   TEACHER_ARGS    more `dhrd rationales generate` arguments, word-split []
#   EXPORT          after training: none, lean, hf, or all (lean, and hf where the head
#                   allows) into $OUTPUT_DIR/export/{lean,hf} [none]
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
EXPORT=${EXPORT:-none}
case "$EXPORT" in none|lean|hf|all) ;; *) echo "[train.sh] error: EXPORT=$EXPORT: give none, lean, hf or all" >&2; exit 2;; esac
partial=${RATIONALE_FILE%.jsonl}.partial.jsonl  # where the generation appends until it is complete
# A missing rationale file: generated first when a teacher is configured, else stop now
# (seconds into the job, before any model loads) saying how to get one
if [ -n "$RATIONALE_FILE" ] && [ ! -f "$RATIONALE_FILE" ] && [ -z "${TEACHER_MODEL:-}" ]; then
  echo "[train.sh] error: rationale file $RATIONALE_FILE is missing: set TEACHER_MODEL (a local model dir, or with TEACHER_URL an endpoint's model) to generate it in this job, or run: dhrd rationales generate --task $TASK --input $TRAIN_FILE --out $RATIONALE_FILE --model TEACHER$([ -f "$partial" ] && echo " (a generation stopped part-way is in $partial: the same teacher resumes it)")" >&2
  exit 2
fi
mkdir -p "$OUTPUT_DIR"

requeue() {  # $1: what was interrupted
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
    echo "[train.sh] $1 preempted, but already restarted $SLURM_RESTART_COUNT times (MAX_REQUEUES): not requeueing"
    exit 1
  fi
  echo "[train.sh] $1 stopped after the signal; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}

# wait for pid $1 until it is gone (a trapped signal makes `wait` return early); sets rc
wait_gone() {
  rc=0
  while :; do
    wait "$1" && rc=0 || rc=$?
    kill -0 "$1" 2>/dev/null || break
  done
}

generate_rationales() {
  local gen=(python -m dhrd.cli rationales generate --task "$TASK" --input "$TRAIN_FILE" --out "$partial"
             --mode gold --model "$TEACHER_MODEL")
  [ -n "${TEACHER_URL:-}" ] && gen+=(--base_url "$TEACHER_URL")
  # shellcheck disable=SC2206  # TEACHER_ARGS is documented as word-split
  [ -n "${TEACHER_ARGS:-}" ] && gen+=($TEACHER_ARGS)
  echo "[train.sh] generating $RATIONALE_FILE (gold mode; appends to $partial, a rerun resumes): ${gen[*]}"
  # USR1 (time limit near) and TERM stop the generator like Ctrl-C: every finished record
  # is on disk; after USR1 the job is requeued and the rerun generates only what is missing
  got="" gen_pid=""
  trap 'got=USR1; kill -INT "$gen_pid" 2>/dev/null || true' USR1
  trap 'got=TERM; kill -TERM "$gen_pid" 2>/dev/null || true' TERM
  "${gen[@]}" &
  gen_pid=$!
  wait_gone "$gen_pid"
  trap - USR1 TERM
  [ "$got" = USR1 ] && requeue "rationale generation"
  if [ "$rc" -ne 0 ]; then echo "[train.sh] rationale generation exited with status $rc"; exit "$rc"; fi
  echo "[train.sh] consistency of the generated rationales:"
  python -m dhrd.cli rationales check --task "$TASK" --input "$TRAIN_FILE" --rationales "$partial"
  local stem=${partial%.jsonl} final=${RATIONALE_FILE%.jsonl}
  [ -f "$stem.failures.jsonl" ] && mv "$stem.failures.jsonl" "$final.failures.jsonl"
  [ -f "$stem.summary.json" ] && mv "$stem.summary.json" "$final.summary.json"
  mv "$partial" "$RATIONALE_FILE"  # complete: training reads it from now on
}
if [ -n "$RATIONALE_FILE" ] && [ ! -f "$RATIONALE_FILE" ]; then generate_rationales; fi

# --resume auto: a fresh job finds no checkpoint and starts at step 0; a requeued one
# (or a new job on the same OUTPUT_DIR) continues from the newest complete checkpoint
args=(--task "$TASK" --model "$MODEL" --train_file "$TRAIN_FILE" --ds_config "$DS_CONFIG"
      --output_dir "$OUTPUT_DIR" --resume auto)
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
wait_gone "$srun_pid"
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
  requeue "training (checkpoint written)"
fi
echo "[train.sh] training exited with status $rc"
if [ "$rc" -eq 0 ] && [ "$EXPORT" != none ]; then
  dest=$OUTPUT_DIR/export
  [ "$EXPORT" = all ] || dest=$dest/$EXPORT
  echo "[train.sh] exporting the classifier ($EXPORT) to $dest"
  python "$REPO/tools/export_classifier.py" "$OUTPUT_DIR" "$dest" --format "$EXPORT" || rc=$?
fi
exit "$rc"
