#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1, for the tests and the bench of clean's Slurm executor: munged, slurmctld
# and slurmd from Debian's packages, started directly (no systemd, no cgroups: proctrack/linuxproc, task/none), run
# as root, with every config, key, socket, log and state file in one folder.
#
#   scripts/slurm_local.sh start  [DIR]   # installs slurm-wlm and munge if missing (as root, with apt-get), starts the
#                                         # three daemons, waits until the node is idle; prints `export SLURM_CONF=...`
#   scripts/slurm_local.sh status [DIR]   # sinfo of the cluster; exit 1 if it is not up
#   scripts/slurm_local.sh stop   [DIR]   # the three daemons killed by the ids in their pid files
#
# DIR: $SLURM_LOCAL_DIR, else /tmp/slurm-local (kept short: munge's socket path must fit in 108 bytes). Clients
# (sbatch, sinfo, datatrove's SlurmPipelineExecutor) find the cluster by SLURM_CONF=DIR/slurm.conf. One partition,
# `cpu` (params.yaml's clean.slurm.partition), holding every CPU of this machine; ports: $SLURM_LOCAL_PORT (the
# controller) and the next one (slurmd), 6817 by default.
set -euo pipefail

cmd=${1:-status}
DIR=$(realpath -m "${2:-${SLURM_LOCAL_DIR:-/tmp/slurm-local}}")
PORT=${SLURM_LOCAL_PORT:-6817}
export SLURM_CONF=$DIR/slurm.conf

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "slurm_local: slurmctld/slurmd/munged not found; as root run: apt-get install -y slurm-wlm munge" >&2
        exit 2
    fi
    local apt=(apt-get install -y -q --no-install-recommends slurm-wlm munge)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null || {
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt[@]}" >/dev/null
    }
}

write_config() {
    mkdir -p "$DIR"/{munge,state,spool,log,run}
    chmod 700 "$DIR" "$DIR/munge"
    [[ -s $DIR/munge/munge.key ]] || head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    local host node
    host=$(hostname -s)
    # what slurmd detects here (CPUs, sockets, cores, threads, memory), as the node's line
    node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")
    cat >"$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
$node State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
    [[ -f $SLURM_CONF ]] && sinfo -h -o %t 2>/dev/null | grep -qx idle
}

start() {
    install
    if up; then
        echo "export SLURM_CONF=$SLURM_CONF"
        return
    fi
    write_config
    munged --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --force
    slurmctld -f "$SLURM_CONF" -i
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 60); do
        if up; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 1
    done
    echo "slurm_local: the node is not idle after 60 s; logs in $DIR/log:" >&2
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 1
}

stop() {
    local daemon pid
    for daemon in slurmd slurmctld munged; do
        pid=$(cat "$DIR/run/$daemon.pid" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$DIR/run/$daemon.pid"
    done
}

case $cmd in
start) start ;;
stop) stop ;;
status) up && sinfo ;;
*)
    echo "usage: $0 start|stop|status [DIR]" >&2
    exit 2
    ;;
esac
