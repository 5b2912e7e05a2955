#!/usr/bin/env bash
# A real Slurm "cluster" on this one host, for tests/slurm: munged + slurmctld + one
# slurmd per fake node (Debian's slurm-wlm is the multiple-slurmd build, so n1..nN can
# all live on 127.0.0.1 with their own ports and spool dirs). Everything (config, state,
# logs, munge key and socket) lives under $SLURM_BASE, nothing in /etc is touched.
#
# Usage:  local_cluster.sh start|stop|status
# Env:    SLURM_BASE   (default ${TMPDIR:-/tmp}/dhrd-local-slurm)
#         SLURM_NODES  fake nodes n1..nN, default 2 (1 = one node named after the host)
#         SLURM_PORT   slurmctld port, default 6817; slurmd of node i uses SLURM_PORT+100+i
#         SLURM_CPUS_PER_NODE  default $(nproc)
# After start: source "$SLURM_BASE/env.sh" (sets SLURM_CONF); sbatch/srun/squeue then work.
# 'start' is idempotent: it stops daemons it started earlier (found by its own pid
# files, never by name) and starts a fresh cluster with empty state.
set -euo pipefail

BASE=${SLURM_BASE:-${TMPDIR:-/tmp}/dhrd-local-slurm}
NODES=${SLURM_NODES:-2}
PORT=${SLURM_PORT:-6817}
CPUS=${SLURM_CPUS_PER_NODE:-$(nproc)}
CONF=$BASE/etc/slurm.conf
MSOCK=$BASE/munge/run/munge.socket.2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "[local-cluster] $*" >&2; }

# Kill a daemon from its pid file, only if that pid still runs the expected program
# (a recycled pid must not take an unrelated process down with it).
kill_pidfile() { # pidfile comm
  local f=$1 comm=$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_all() {
  # cancel what is still queued so that job processes do not outlive the daemons
  if [ -f "$CONF" ] && [ -f "$BASE/run/slurmctld.pid" ]; then
    SLURM_CONF=$CONF timeout 10 squeue -h -o %i 2>/dev/null \
      | xargs -r env SLURM_CONF="$CONF" scancel 2>/dev/null || true
    sleep 1
  fi
  local f
  for f in "$BASE"/run/slurmd-*.pid; do [ -e "$f" ] && kill_pidfile "$f" slurmd; done
  kill_pidfile "$BASE/run/slurmctld.pid" slurmctld
  kill_pidfile "$BASE/munge/run/munged.pid" munged
}

write_conf() {
  local host mem nodemem i
  host=$(hostname -s)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mkdir -p "$BASE"/{etc,var/state,var/spool,log,run}
  {
    echo "ClusterName=dhrdci"
    echo "SlurmctldHost=${host}(127.0.0.1)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "SlurmctldPort=$PORT"
    echo "SlurmdPort=$((PORT + 1))"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    # cred_expire is also how long a requeued job is held before it may start again
    # (default 120 s); releasing it sooner can hit "Job credential revoked" on a node
    echo "AuthInfo=socket=$MSOCK,cred_expire=15"
    cat <<CONF
StateSaveLocation=$BASE/var/state
SlurmdSpoolDir=$BASE/var/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
# linuxproc tracks a step's processes by parentage: no cgroups needed in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# the fake nodes share one host's cores; let each advertise them all
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
# a job may requeue itself (scontrol requeue) after saving a checkpoint
JobRequeue=1
CONF
    if [ "$NODES" -le 1 ]; then
      echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
    else
      nodemem=$(( mem / NODES ))
      for i in $(seq 1 "$NODES"); do
        echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 100 + i)) CPUs=$CPUS RealMemory=$nodemem State=UNKNOWN"
      done
    fi
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  echo "export SLURM_CONF=$CONF" > "$BASE/env.sh"
}

node_names() {
  if [ "$NODES" -le 1 ]; then hostname -s; else for i in $(seq 1 "$NODES"); do echo "n$i"; done; fi
}

start_munge() {
  mkdir -p "$BASE"/munge/{etc,lib,log,run}
  # munged refuses keys and dirs readable by others
  chmod 700 "$BASE"/munge/{etc,lib,log}; chmod 755 "$BASE/munge" "$BASE/munge/run"
  if [ ! -s "$BASE/munge/etc/munge.key" ]; then
    dd if=/dev/urandom of="$BASE/munge/etc/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$BASE/munge/etc/munge.key"
  fi
  munged -S "$MSOCK" --key-file="$BASE/munge/etc/munge.key" \
    --log-file="$BASE/munge/log/munged.log" --pid-file="$BASE/munge/run/munged.pid" \
    --seed-file="$BASE/munge/lib/munged.seed" </dev/null >>"$BASE/log/daemons.out" 2>&1
  munge -S "$MSOCK" -n | unmunge -S "$MSOCK" >/dev/null   # fails loudly if munge is broken
}

start_all() {
  bash "$HERE/install_slurm.sh"
  stop_all
  rm -rf "$BASE/var/state" "$BASE/var/spool" "$BASE"/log/*.log
  write_conf
  export SLURM_CONF=$CONF
  start_munge
  slurmctld -f "$CONF" </dev/null >>"$BASE/log/daemons.out" 2>&1
  local n
  for n in $(node_names); do
    mkdir -p "$BASE/var/spool/$n"
    slurmd -f "$CONF" -N "$n" </dev/null >>"$BASE/log/daemons.out" 2>&1
  done
  for _ in $(seq 1 120); do   # wait until every node is idle
    if [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2=="idle"' | wc -l)" -ge "$NODES" ]; then
      log "cluster up ($NODES node(s)); source $BASE/env.sh"
      return 0
    fi
    sleep 0.5
  done
  log "ERROR: nodes not idle after 60s"; sinfo >&2 || true; tail -20 "$BASE"/log/*.log >&2
  return 1
}

case "${1:-start}" in
  start)  start_all ;;
  stop)   stop_all; log "stopped" ;;
  status) SLURM_CONF=$CONF sinfo; SLURM_CONF=$CONF squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
