#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine, for developing and testing `cluster=slurm`.
#
#   bash scripts/slurm_up.sh      # install (Debian packages), configure, start, smoke-test
#   bash scripts/slurm_down.sh    # stop it again
#
# Needs root (it installs packages and starts daemons) and Debian's packages slurmctld, slurmd,
# slurm-client, slurmdbd, munge and mariadb-server; missing ones are installed with apt-get. No
# systemd needed: the daemons are started directly. Running it again while the cluster is up only
# checks it (and restarts it if the configuration it would write has changed). The node is this
# machine (named after `hostname -s`, reached on 127.0.0.1) with the CPUs and memory it has, in one
# default partition `debug`; no cgroups. Accounting (slurmdbd on a local MariaDB, reached on its
# Unix socket only) is there because submitit follows its jobs with `sacct`.
#
# Files: /etc/slurm/slurm.conf and slurmdbd.conf (refused if they exist and this script did not
# write them), state in /var/spool/slurm-dev, logs in /var/log/slurm-dev, pid files in
# /run/slurm-dev. Environment: SLURM_UP_TIMEOUT (seconds to wait for each step, default 60).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
MARKER="# Written by superposition's scripts/slurm_up.sh (one-node development cluster)."
SPOOL=/var/spool/slurm-dev
LOG_DIR=/var/log/slurm-dev
RUN_DIR=/run/slurm-dev
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

log() { echo "slurm_up: [${SECONDS}s] $*"; }
fail() {
    echo "slurm_up: error: $*" >&2
    exit 1
}
show_logs() {
    local f
    for f in "$LOG_DIR"/*.log; do
        [[ -s $f ]] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    return 0
}
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; } # PIDFILE
stop() {                                                         # PIDFILE
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
}
wait_for() { # NAME PIDFILE COMMAND...: retry COMMAND until it succeeds, NAME dies or TIMEOUT passes
    local what=$1 pidfile=$2 deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [[ -s $pidfile ]] && ! running "$pidfile"; then
            show_logs
            fail "$what stopped right after it started"
        fi
        if ((SECONDS >= deadline)); then
            show_logs
            fail "$what: no answer after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# `sinfo -h -o %T` prints one state per node; a trailing * ~ # ! % $ @ marks a node that is not
# usable as is (not responding, powered down, ...), so only the bare words count as up. sinfo
# retries for a while when no slurmctld answers: give it 3 seconds.
node_state() { timeout 3 sinfo -h -o %T 2>/dev/null | head -n 1; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_ok() { mariadb -e 'SELECT 1' >/dev/null 2>&1; }

smoke_test() {
    local out job state deadline=$((SECONDS + 60))
    out=$(timeout 60 srun -N1 -n1 --mem=64 -t 1 hostname 2>&1) ||
        fail "srun hostname did not run: $out"
    job=$(sbatch --parsable --mem=64 -t 1 -o /dev/null --wrap true 2>&1) ||
        fail "sbatch --wrap true was refused: $job"
    until [[ ${state:-} == COMPLETED ]]; do
        ((SECONDS < deadline)) ||
            fail "test job $job not COMPLETED in sacct after 60s (state: ${state:-none}; see $LOG_DIR)"
        sleep 0.5
        state=$(sacct -n -X -P -j "$job" -o State 2>/dev/null | head -n 1)
    done
    log "srun, sbatch and sacct work (test job $job)"
}

# The configuration, with this machine's CPUs and memory.
slurm_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(free -m | awk '/^Mem:/ {print $2}')
    cat <<EOF
$MARKER
ClusterName=dev
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job (preemption, time limit) may start again after 20 s, not the default 120 s
AuthInfo=cred_expire=20
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# look for work every 5 s (so a requeued job starts soon after it may), not every 30 to 60 s
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
# refuse at submission a job that no node can ever run, rather than keep it pending
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
# finished jobs stay visible to squeue and scontrol for 5 minutes
MinJobAge=300
DefMemPerCPU=1024
# a tenth of the memory is left to the system
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem_mb * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}
dbd_conf() {
    cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
EOF
}
conf_current() { [[ -f $CONF && $(slurm_conf) == "$(cat "$CONF")" ]]; }

if command -v sinfo >/dev/null && node_ready; then
    if ! grep -qxF "$MARKER" "$CONF" 2>/dev/null || conf_current; then
        log "already running: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n 1)"
        smoke_test
        exit 0
    fi
    log "running, but with another configuration than this script writes now: restarting"
fi

[[ $(id -u) -eq 0 ]] || fail "must run as root (it installs packages and starts daemons): sudo bash $0"

missing=()
for bin in slurmctld slurmd slurmdbd sinfo munged mariadbd; do
    command -v "$bin" >/dev/null || missing+=("$bin")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null ||
        fail "${missing[*]} not found and no apt-get to install them: install ${PACKAGES[*]} (or your system's SLURM, munge and MariaDB packages) by hand"
    log "installing ${PACKAGES[*]} with apt-get (for ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || fail "apt-get update failed (no network to the package mirror?)"
    # Keep the packages' own start scripts from starting the daemons with Debian's defaults:
    # this script starts them with its configuration.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
        fail "apt-get install ${PACKAGES[*]} failed"
    log "installed"
fi

for f in "$CONF" "$DBD_CONF"; do
    if [[ -f $f ]] && ! grep -qxF "$MARKER" "$f"; then
        fail "$f exists and was not written by this script; not overwriting it"
    fi
done
mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOG_DIR" "$RUN_DIR"
slurm_conf >"$CONF.tmp"
mv "$CONF.tmp" "$CONF"
(umask 077 && dbd_conf >"$DBD_CONF.tmp") # slurmdbd wants its file private
mv "$DBD_CONF.tmp" "$DBD_CONF"

# munge: the authentication every SLURM message carries. Started here only if it is not running.
if ! munge_ok; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged || fail "munged did not start (see /var/log/munge/munged.log)"
    wait_for "munged" "" munge_ok
    cp /run/munge/munged.pid "$RUN_DIR/munged.pid" # slurm_down.sh stops the munged it finds here
    log "munged started"
fi

# MariaDB for slurmdbd, on its Unix socket only. Started here only if it is not running.
if ! db_ok; then
    install -d -o mysql -g mysql /run/mysqld
    setsid mariadbd --user=mysql --skip-networking </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
    echo $! >"$RUN_DIR/mariadb.pid" # slurm_down.sh stops the mariadbd it finds here
    wait_for "mariadbd" "$RUN_DIR/mariadb.pid" db_ok
    log "mariadbd started"
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db" || fail "cannot create slurm_acct_db"

# (Re)start the SLURM daemons: whatever of ours is running is not serving a ready node.
for daemon in slurmd slurmctld slurmdbd; do
    if running "$RUN_DIR/$daemon.pid"; then
        log "stopping the running $daemon"
        stop "$RUN_DIR/$daemon.pid"
    fi
    rm -f "$RUN_DIR/$daemon.pid"
done
slurmdbd || { show_logs; fail "slurmdbd did not start"; }
wait_for "slurmdbd" "$RUN_DIR/slurmdbd.pid" sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx dev; then
    sacctmgr -i add cluster dev >/dev/null || fail "sacctmgr add cluster dev failed"
fi
log "slurmdbd started"
slurmctld -i || { show_logs; fail "slurmctld did not start"; }
slurmd || { show_logs; fail "slurmd did not start"; }
log "slurmctld and slurmd started"

deadline=$((SECONDS + TIMEOUT))
until node_ready; do
    state=$(node_state)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    fi
    if ((SECONDS >= deadline)); then
        show_logs
        fail "node $(hostname -s) not idle after ${TIMEOUT}s (state: ${state:-no answer from slurmctld})"
    fi
    sleep 1
done
log "node $(hostname -s) up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n 1)"
smoke_test
