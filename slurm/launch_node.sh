#!/usr/bin/env bash
# srun -> torchrun glue: slurm/train.sh runs this once per node (srun, one task per node).
# It starts the node's NPROC_PER_NODE training processes with torchrun, rendezvousing at
# the job's first node. All arguments go to dhrd/train.py.
#
#   node rank   = SLURM_PROCID (one task per node, so task rank = node rank)
#   nodes       = SLURM_NNODES
#   master      = first host of SLURM_JOB_NODELIST (its NodeAddr, which is what the nodes
#                 reach it by), port 29500 + job id % 20000 (stable across a requeue,
#                 distinct for jobs sharing a node); MASTER_ADDR / MASTER_PORT override
#   processes   = NPROC_PER_NODE, else GPUS_PER_NODE, else SLURM_GPUS_ON_NODE, else the
#                 GPUs nvidia-smi lists, else 1
set -euo pipefail
: "${SLURM_JOB_NODELIST:?launch_node.sh runs under srun inside a Slurm job}"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ -n "${ENV_SETUP:-}" ] && eval "$ENV_SETUP"

nnodes=${SLURM_NNODES:-1}
node_rank=${SLURM_PROCID:-0}
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
if [ -z "${MASTER_ADDR:-}" ]; then
  MASTER_ADDR=$(scontrol show node "$first" -o | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
  MASTER_ADDR=${MASTER_ADDR:-$first}
fi
MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 20000))}

gpus() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0; }
nproc_per_node=${NPROC_PER_NODE:-${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}}
if [ -z "$nproc_per_node" ]; then
  nproc_per_node=$(gpus)
  [ "$nproc_per_node" -gt 0 ] || nproc_per_node=1
fi

# Slurm signals every process of the step. Only the trainers should act on USR1/TERM
# (checkpoint at a step boundary, then exit): this shell and torchrun ignore them. An
# ignored signal stays ignored across exec, and TORCHELASTIC_SIGNALS_TO_HANDLE keeps
# torchrun from installing its own TERM handler (which would kill the trainers mid-step);
# the trainers install their handlers (dhrd/engine/preemption.py). Slurm's SIGKILL after
# KillWait still ends everything.
trap '' USR1 TERM
export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

echo "[launch_node.sh] $(hostname) node $node_rank/$nnodes: $nproc_per_node process(es), master $MASTER_ADDR:$MASTER_PORT" >&2
exec torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$nproc_per_node" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  "$REPO/dhrd/train.py" "$@"
