#!/usr/bin/env bash
# Stop the one-node SLURM cluster that scripts/slurm_up.sh started: slurmd, slurmctld, slurmdbd,
# and the munged and mariadbd it started (ones that were already running are left alone). Jobs
# still queued or running are lost. Packages, configuration and the accounting database stay, so
# slurm_up.sh starts it again in seconds. Stopping a cluster that is not running is fine.
set -euo pipefail

RUN_DIR=/run/slurm-dev

[[ $(id -u) -eq 0 ]] || {
    echo "slurm_down: error: must run as root: sudo bash $0" >&2
    exit 1
}

for daemon in slurmd slurmctld slurmdbd mariadb munged; do
    pidfile=$RUN_DIR/$daemon.pid
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "slurm_down: stopped $daemon (pid $pid)"
    fi
    rm -f "$pidfile"
done
echo "slurm_down: SLURM is stopped"
