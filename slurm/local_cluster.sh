#!/bin/bash
# A one-host Slurm cluster in a folder of its own, for the tests and for trying the suite's sbatch script on a laptop:
#   slurm/local_cluster.sh start DIR   # munged, slurmctld and slurmd on this host; prints the SLURM_CONF to export
#   slurm/local_cluster.sh stop DIR    # stops the three daemons it started (by their pid files in DIR)
# Everything (config, key, sockets, state, spool, logs, pid files) lives in DIR; nothing under /etc is written. The
# Debian packages are installed with apt when missing (as root, as `make test` installs chromium).
set -euo pipefail
CMD=${1:?usage: local_cluster.sh start|stop DIR}
DIR=$(mkdir -p "${2:?usage: local_cluster.sh start|stop DIR}" && cd "$2" && pwd)

free_port() {                                       # the first pair of ports from 6917 on that nothing listens on
  local p
  for p in $(seq 6917 2 7917); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null
    then echo "$p"; return; fi
  done
  echo "local_cluster: no free port pair in 6917-7918" >&2
  exit 1
}

stop() {
  for d in slurmd slurmctld munged; do               # slurmd first: it reports to slurmctld, which needs munged
    f="$DIR/$d.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return
  [ "$(id -u)" = 0 ] || { echo "local_cluster: slurmctld, slurmd, munge missing and not root to apt-get them" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge \
    >/dev/null
}

start() {
  install
  stop                                                # a cluster left in DIR by a killed test: replace it
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  [ -s "$DIR/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none; }
  chmod 0400 "$DIR/munge.key"
  # --force: munged as root, with its key and socket in a folder it does not own; the key is this cluster's own
  munged --force --key-file "$DIR/munge.key" --socket "$DIR/munge.socket" --pid-file "$DIR/munged.pid" \
    --log-file "$DIR/log/munged.log" --seed-file "$DIR/munge.seed"
  local node cpus mem user port
  port=${SLURM_PORT:-$(free_port)}                  # slurmctld's port; slurmd takes the next one
  node=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  user=$(id -un)
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=longctx-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# a requeued job or one whose dependency is met starts at the next scheduling pass: every 2 s, not 60 / 30 s
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=60
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  export SLURM_CONF="$DIR/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 150); do                             # up when the node takes jobs (usually a few seconds)
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then echo "SLURM_CONF=$SLURM_CONF"; return; fi
    sleep 0.2
  done
  echo "local_cluster: the node did not come up; see $DIR/log" >&2
  tail -n 5 "$DIR"/log/*.log >&2 || true
  stop
  exit 1
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: local_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
