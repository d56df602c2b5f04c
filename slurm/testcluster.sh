#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on this machine, for the tests and for trying the
# sbatch scripts without a real cluster. Root only; Debian's slurmctld slurmd slurm-client munge
# (Slurm 22.05; `bash scripts/install.sh test` installs them).
#
#   slurm/testcluster.sh start [DIR]   # start munged, slurmctld, slurmd with files under DIR
#   eval "$(slurm/testcluster.sh env [DIR])"   # point sbatch/squeue/scontrol at it
#   slurm/testcluster.sh stop [DIR]    # cancel its jobs, stop the daemons, delete DIR
#
# DIR defaults to $ADAMGAP_TESTCLUSTER or /tmp/adamgap-slurm. Nothing outside DIR is touched:
# no systemd, no /etc/slurm, no cgroups (proctrack/linuxproc, task/none), no accounting (so no
# sacct: use `scontrol show job` / `squeue`). The node is named `hostname -s` and listens on
# 127.0.0.1; it advertises TESTCLUSTER_CPUS CPUs (default 4, more than a small CI machine has,
# so that a DDP job and a job array fit) and TESTCLUSTER_GPUS fake GPUs (default 4: GRES backed
# by symlinks to /dev/null, for scheduling only; train with trainer.accelerator=cpu).
set -euo pipefail

usage() { echo "usage: $0 start|stop|env|status [DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
action=$1
DIR=${2:-${ADAMGAP_TESTCLUSTER:-/tmp/adamgap-slurm}}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)

free_port() {  # an unused TCP port on 127.0.0.1
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pidfile() {  # stop the daemon whose pid is in $1 and wait until it is gone
  local pidfile=$1 pid i
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

start() {
  [ "$(id -u)" = 0 ] || { echo "testcluster: must run as root" >&2; exit 3; }
  local cmd
  for cmd in munged slurmctld slurmd sbatch scontrol; do
    command -v "$cmd" >/dev/null || PATH=$PATH:/usr/sbin
    command -v "$cmd" >/dev/null || { echo "testcluster: $cmd not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 3; }
  done
  if [ -e "$CONF" ]; then echo "testcluster: $DIR already holds a cluster; stop it first" >&2; exit 1; fi
  mkdir -p "$DIR"/{state,spool,log,munge/key}
  chmod 755 "$DIR" "$DIR/munge"  # munged refuses a socket directory others cannot enter
  chmod 700 "$DIR/munge/key"
  head -c 1024 /dev/urandom > "$DIR/munge/key/munge.key"
  chmod 400 "$DIR/munge/key/munge.key"
  local gpus=${TESTCLUSTER_GPUS:-4} cpus=${TESTCLUSTER_CPUS:-4} g
  : > "$DIR/gres.conf"
  for g in $(seq 0 $((gpus - 1))); do
    ln -sf /dev/null "$DIR/gpu$g"
    echo "NodeName=$NODE Name=gpu File=$DIR/gpu$g" >> "$DIR/gres.conf"
  done
  cat > "$CONF" <<EOF
# written by slurm/testcluster.sh: a throw-away single-node cluster
ClusterName=adamgaptest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=600
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/key/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  export SLURM_CONF=$CONF
  slurmctld -c -f "$CONF"
  slurmd -f "$CONF"
  # `sinfo` can report idle before slurmd has registered: wait for a real job step to run.
  local i
  for i in $(seq 60); do
    if timeout 20 srun --quiet --time=1 --ntasks=1 true 2>/dev/null; then
      echo "testcluster: up (node $NODE, $cpus CPUs, $gpus fake GPUs); eval \"\$($0 env $DIR)\""
      return 0
    fi
    sleep 1
  done
  echo "testcluster: the node did not come up; logs in $DIR/log" >&2
  tail -n 20 "$DIR"/log/*.log >&2 || true
  stop
  exit 1
}

stop() {
  if [ -e "$CONF" ]; then
    SLURM_CONF=$CONF timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pidfile "$DIR/slurmd.pid"
  stop_pidfile "$DIR/slurmctld.pid"
  stop_pidfile "$DIR/munge/munged.pid"
  rm -rf "$DIR"
}

case $action in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) SLURM_CONF=$CONF sinfo -N -o "%N %T %c %G" && SLURM_CONF=$CONF squeue ;;
  *) usage ;;
esac
