"""The CPUs a job was given, and how many of them other processes keep busy; engine/threads.py
turns them into thread counts."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from superposition.config import ConfigError

# the CPU list (e.g. "0-3" or "4,5") the local launcher gives each job of a multirun
LOCAL_CPUS_ENV = "SUPERPOSITION_CPUS"
# how long the start of a job watches its CPUs for other work, and what counts as busy
BUSY_WINDOW_S = 0.15
# the CPU quota of this process's cgroup: v2, else v1 (quota and period in microseconds)
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
PROC_STAT = Path("/proc/stat")


class CpuListError(ConfigError):
    """LOCAL_CPUS_ENV holds no CPU list."""


def parse_cpu_list(text: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6} (the kernel's cpulist format)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise CpuListError(f"{LOCAL_CPUS_ENV}={text!r} is not a CPU list like 0-3,6") from None
    return cpus


def format_cpu_list(cpus: set[int] | list[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass(frozen=True)
class CpuAllocation:
    """The CPUs a job may use: how many, which (None where unknown), and what set the number."""

    cpus: int
    ids: frozenset[int] | None
    source: str


def affinity() -> frozenset[int] | None:
    """The CPUs this process may run on; None where the system cannot say (macOS)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


def _cgroup_quota() -> int | None:
    """CPUs of the cgroup's quota (v2 'max 100000' or v1 -1: none), rounded up."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        limited = quota != "max"
    except (OSError, ValueError):
        try:
            quota, period = CGROUP_V1_QUOTA.read_text(), CGROUP_V1_PERIOD.read_text()
            limited = int(quota) > 0
        except (OSError, ValueError):
            return None
    return max(1, math.ceil(int(quota) / int(period))) if limited else None


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    if not value or "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        return None


def pin_to_local_share() -> bool:
    """Pin this process to the CPU list the local launcher gave it (LOCAL_CPUS_ENV; the launcher
    also pins the job's whole process tree with taskset where it can), within its affinity mask.
    Whether it runs on that share now."""
    text = os.environ.get(LOCAL_CPUS_ENV)
    mask = affinity()
    if not text or mask is None:
        return False
    share = parse_cpu_list(text) & mask
    if not share:
        return False
    os.sched_setaffinity(0, share)
    return True


def cpu_allocation(pin: bool = True) -> CpuAllocation:
    """The job's CPUs: its affinity mask (or the local launcher's share of it, pinned to when
    `pin`), capped by its cgroup quota and SLURM_CPUS_PER_TASK."""
    pinned = pin and pin_to_local_share()
    ids = affinity()
    count = len(ids) if ids is not None else os.cpu_count() or 1
    allocation = CpuAllocation(count, ids, "local launcher share" if pinned else "affinity mask")
    if ids is None:
        allocation = CpuAllocation(count, None, "CPU count")
    for cpus, source in ((_cgroup_quota(), "cgroup CPU quota"), (_slurm_cpus(), "SLURM")):
        if cpus is not None and cpus < allocation.cpus:
            allocation = CpuAllocation(cpus, ids, source)
    return allocation


def _cpu_times() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat."""
    times = {}
    for line in PROC_STAT.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq ...
        idle = ticks[3] + ticks[4]
        times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def busy_cpus(ids: frozenset[int] | None, window_s: float = BUSY_WINDOW_S) -> float:
    """How many of the CPUs `ids` other processes kept busy over `window_s` seconds (this
    process sleeps meanwhile; what its own threads still ran, e.g. a previous job's spinning
    OpenMP threads, is not counted); 0.0 where /proc/stat cannot tell."""
    if not ids:
        return 0.0
    try:
        before, own_before, start = _cpu_times(), time.process_time(), time.perf_counter()
        time.sleep(window_s)
        after, own = _cpu_times(), time.process_time() - own_before
        elapsed = time.perf_counter() - start
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = 0.0
    for cpu in ids & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        if total > 0:
            busy += (after[cpu][0] - before[cpu][0]) / total
    return max(0.0, busy - own / elapsed)
