"""What SLURM says of a sweep's jobs: squeue for the queued and running ones, sacct for the ended.

Every query is optional: without the commands (no SLURM here), or when one fails or hangs, the
answer is empty and the status is read from the job directories alone.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

QUERY_TIMEOUT_S = 10
# sacct states of a job that ended without finishing its work
ENDED_BADLY = {
    "BOOT_FAIL",
    "CANCELLED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


@dataclass(frozen=True)
class SchedulerState:
    state: str  # SLURM's: PENDING, RUNNING, COMPLETED, FAILED, ...
    reason: str = ""  # squeue's reason a job is pending, sacct's exit code


def _run(command: list[str]) -> list[str]:
    if shutil.which(command[0]) is None:
        return []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


def slurm_states(array_ids: list[str]) -> dict[str, SchedulerState]:
    """State of every task of these SLURM arrays, by task id (ARRAYID_INDEX); squeue's view of
    queued and running tasks wins over sacct's record."""
    if not array_ids:
        return {}
    ids = ",".join(array_ids)
    states = {}
    sacct = ["sacct", "-n", "-P", "-X", "-j", ids, "--format=JobID,State,ExitCode"]
    for line in _run(sacct):
        parts = line.split("|")
        if len(parts) == 3 and "[" not in parts[0]:
            # "CANCELLED by 0" → CANCELLED
            states[parts[0]] = SchedulerState(parts[1].split()[0], parts[2])
    for line in _run(["squeue", "-h", "-r", "-j", ids, "-o", "%i|%T|%r"]):
        parts = line.split("|")
        if len(parts) == 3:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            states[parts[0]] = SchedulerState(parts[1], reason)
    return states
