#!/usr/bin/env bash
# A real single-node Slurm on localhost, for tests and laptops.
#
#   deploy/local-slurm.sh start    # generate slurm.conf, start munged, slurmctld, slurmd; wait for idle
#   deploy/local-slurm.sh stop     # cancel jobs, stop the daemons of this state directory
#   deploy/local-slurm.sh status   # what runs, and sinfo; exit 0 when up, 3 when not
#
# Installs nothing: needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root.
# `start` prints `export SLURM_CONF=...` on stdout (everything else goes to stderr), so
#   eval "$(sudo deploy/local-slurm.sh start)"
# points sbatch/squeue/scontrol of the calling shell at this cluster.
#
# Settings (environment):
#   MATFORGE_SLURM_DIR      state directory: slurm.conf, state, spool, logs, pid files, munge socket
#                           [/tmp/matforge-slurm]
#   MATFORGE_SLURM_PORT     slurmctld port; slurmd listens on the next one [6817]
#   MATFORGE_SLURM_TIMEOUT  seconds `start` waits for the node to be idle [60]
#   MATFORGE_MUNGE_KEY      munge key, created when missing [/etc/munge/munge.key]
#
# No accounting storage: `sacct` does not work here. A finished job stays visible to
# `scontrol show job <id>` (JobState=COMPLETED/FAILED/CANCELLED/TIMEOUT) for MinJobAge=300 s,
# and leaves squeue as soon as it ends.
set -euo pipefail

PROG=local-slurm
DIR=${MATFORGE_SLURM_DIR:-/tmp/matforge-slurm}
PORT=${MATFORGE_SLURM_PORT:-6817}
TIMEOUT=${MATFORGE_SLURM_TIMEOUT:-60}
MUNGE_KEY=${MATFORGE_MUNGE_KEY:-/etc/munge/munge.key}
MIN_JOB_AGE=300

say() { echo "$PROG: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  echo "usage: $0 start|stop|status" >&2
  exit 64
}

[ $# -eq 1 ] || usage
case "$1" in start | stop | status) ;; *) usage ;; esac
ACTION=$1

# --- prerequisites ---------------------------------------------------------------------------
missing=()
for cmd in munged slurmctld slurmd sinfo scontrol squeue scancel; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 \
    || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "Slurm/munge are not installed (missing: ${missing[*]});" \
    "install the Debian packages first: apt-get install slurm-wlm munge"
  exit 2
fi
export PATH="$PATH:/usr/sbin:/sbin"

case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
case "$DIR" in *[[:space:]]* | *[,\#=]*) die "MATFORGE_SLURM_DIR must not contain blanks, ',', '#' or '=': $DIR" ;; esac
DIR=${DIR%/}
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65534 ] \
  || die "MATFORGE_SLURM_PORT must be a port number: $PORT"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "MATFORGE_SLURM_TIMEOUT must be whole seconds: $TIMEOUT"

CONF=$DIR/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
export SLURM_CONF=$CONF

# --- the daemons of this state directory -----------------------------------------------------
# pid_of NAME: the pid in run/NAME.pid when that process is NAME and was started for this
# directory (its command line names our slurm.conf or munge socket); empty otherwise.
pid_of() {
  local name=$1 pid marker
  [ -r "$RUN/$name.pid" ] || return 0
  pid=$(tr -dc '0-9' <"$RUN/$name.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
  if [ "$name" = munged ]; then marker=--socket=$MUNGE_SOCKET; else marker=$CONF; fi
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qxF -- "$marker" || return 0
  echo "$pid"
}

running() { [ -n "$(pid_of "$1")" ]; }

# slurmstepd processes (one per job step) that slurmd of this directory started: they inherit
# its SLURM_CONF, and outlive slurmd.
stepds() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxF -- "SLURM_CONF=$CONF"; then
      echo "${p#/proc/}"
    fi
  done
  return 0
}

# descendants PID...: the given pids and all their descendants, children first (from /proc:
# minimal Debian images have no ps)
descendants() {
  local pid p stat fields
  for pid in "$@"; do
    for p in /proc/[0-9]*; do
      stat=$(cat "$p/stat" 2>/dev/null) || continue
      read -r -a fields <<<"${stat##*) }" # state ppid ...
      if [ "${fields[1]:-}" = "$pid" ]; then descendants "${p#/proc/}"; fi
    done
    echo "$pid"
  done
}

stop_pids() { # stop_pids PID...: SIGTERM, wait up to 15 s (each daemon takes 1-2 s), SIGKILL
  local pid i alive
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for i in $(seq 1 150); do
    alive=()
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    [ ${#alive[@]} -gt 0 ] || return 0
    sleep 0.1
  done
  say "$(echo "${alive[@]}") did not stop after SIGTERM; killing"
  kill -KILL "${alive[@]}" 2>/dev/null || true
}

port_busy() { # something accepts connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

log_tails() {
  local f
  for f in "$LOG"/munged.log "$LOG"/slurmctld.log "$LOG"/slurmd.log; do
    [ -s "$f" ] || continue
    echo "--- last lines of $f" >&2
    tail -n 25 "$f" >&2
  done
}

# --- stop ------------------------------------------------------------------------------------
do_stop() {
  local pid name left i
  if running slurmctld; then
    # cancel every job so that no slurmstepd or job process outlives the daemons
    local jobs
    jobs=$(squeue -h -o '%i' 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
    fi
    for i in $(seq 1 100); do # up to 10 s for the steps to end
      [ -z "$(stepds)" ] && break
      sleep 0.1
    done
  fi
  local pids=()
  for name in slurmd slurmctld; do
    pid=$(pid_of "$name")
    if [ -n "$pid" ]; then pids+=("$pid"); fi
  done
  stop_pids "${pids[@]}"
  left=$(stepds)
  if [ -n "$left" ]; then
    say "killing leftover job steps: $(echo $left)"
    # shellcheck disable=SC2086
    kill -KILL $(descendants $left) 2>/dev/null || true
  fi
  pid=$(pid_of munged)
  if [ -n "$pid" ]; then stop_pids "$pid"; fi
  rm -f "$RUN"/slurmctld.pid "$RUN"/slurmd.pid "$RUN"/munged.pid
  return 0
}

# --- status ----------------------------------------------------------------------------------
do_status() {
  local name pid up=0 down=0
  for name in munged slurmctld slurmd; do
    pid=$(pid_of "$name")
    if [ -n "$pid" ]; then
      echo "$name: running (pid $pid)"
      up=$((up + 1))
    else
      echo "$name: not running"
      down=$((down + 1))
    fi
  done
  if [ "$down" -eq 0 ]; then
    echo "SLURM_CONF=$CONF"
    sinfo -N -l 2>/dev/null || true
    return 0
  fi
  [ "$up" -eq 0 ] || echo "partly running: '$0 stop' cleans up, '$0 start' starts the rest"
  return 3
}

# --- start -----------------------------------------------------------------------------------
write_conf() {
  local cpus mem_mb real_mem def_mem
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  # keep 5% (at least 256 MB where there is that much) for the system: slurmd drains a node
  # that reports less memory than slurm.conf promises
  real_mem=$((mem_mb - mem_mb / 20))
  if [ "$mem_mb" -gt 1024 ] && [ $((mem_mb - real_mem)) -lt 256 ]; then real_mem=$((mem_mb - 256)); fi
  [ "$real_mem" -ge 1 ] || real_mem=1
  # memory is a consumable resource: without a default per CPU, every job would get the
  # whole node's memory and jobs would run one at a time
  def_mem=$((real_mem / cpus))
  [ "$def_mem" -ge 1 ] || def_mem=1
  cat >"$CONF.tmp" <<EOF
# Generated by deploy/local-slurm.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); rewritten by every start.
ClusterName=matforge-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# schedule a submitted batch job at once, not up to 3 s later
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# no accounting: finished jobs stay in 'scontrol show job' for MinJobAge seconds
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
KillWait=5
InactiveLimit=0
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv -f "$CONF.tmp" "$CONF"
  chmod 0644 "$CONF"
}

start_munged() {
  if running munged; then return 0; fi
  if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key $MUNGE_KEY"
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$MUNGE_KEY"
    else
      (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none)
    fi
    if getent passwd munge >/dev/null; then chown munge:munge "$MUNGE_KEY"; fi
    chmod 0400 "$MUNGE_KEY"
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  # as root, with --force: munged otherwise wants to run as the key's owner
  munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
    || { log_tails; die "munged did not start"; }
  local i
  for i in $(seq 1 50); do
    [ -S "$MUNGE_SOCKET" ] && running munged && return 0
    sleep 0.1
  done
  log_tails
  die "munged did not start (no socket $MUNGE_SOCKET)"
}

do_start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (e.g. sudo $0 start): slurmd runs jobs as their users"
  NODE=$(hostname -s 2>/dev/null || hostname)
  [ -n "$NODE" ] || die "no hostname"

  if running munged && running slurmctld && running slurmd; then
    say "already running from $DIR (node $NODE, port $PORT)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi

  mkdir -p "$DIR" "$DIR/state" "$DIR/spool" "$RUN" "$LOG" "$MUNGE_DIR"
  # clients (any user) read slurm.conf and talk to the munge socket; munged refuses
  # group/world-writable directories on the socket's path
  chmod 0755 "$DIR" "$RUN" "$LOG" "$MUNGE_DIR"
  chmod 0700 "$DIR/state"

  if ! running slurmctld && ! running slurmd; then
    for p in "$PORT" $((PORT + 1)); do
      if port_busy "$p"; then
        die "port $p on 127.0.0.1 is in use (another Slurm?); set MATFORGE_SLURM_PORT"
      fi
    done
    write_conf
  elif [ ! -r "$CONF" ]; then
    die "daemons run from $DIR without $CONF; run '$0 stop' first"
  fi

  local t0=$SECONDS
  start_munged
  if ! running slurmctld; then
    rm -f "$RUN/slurmctld.pid"
    # -c: no state from an earlier run (stop cancels all jobs anyway), so the node counts as
    # idle only once this slurmd has registered
    slurmctld -c -f "$CONF" || { log_tails; do_stop; die "slurmctld did not start"; }
  fi
  if ! running slurmd; then
    rm -f "$RUN/slurmd.pid"
    slurmd -f "$CONF" -N "$NODE" || { log_tails; do_stop; die "slurmd did not start"; }
  fi

  local state="" deadline=$((SECONDS + TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(node_state)
    case "$state" in idle | mixed | allocated) break ;; esac
    sleep 0.5
  done
  case "$state" in
    idle | mixed | allocated) ;;
    *)
      say "node $NODE is not idle after ${TIMEOUT}s (state: ${state:-no answer from slurmctld})"
      sinfo -N -o '%N %T %E' >&2 2>/dev/null || true
      log_tails
      do_stop
      die "start failed; daemons stopped, logs in $LOG"
      ;;
  esac
  say "running from $DIR: node $NODE $state, partition debug, port $PORT ($((SECONDS - t0)) s)"
  echo "export SLURM_CONF=$CONF"
}

case "$ACTION" in
  start) do_start ;;
  stop)
    do_stop
    say "stopped (state and logs stay in $DIR)"
    ;;
  status) do_status ;;
esac
