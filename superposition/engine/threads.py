"""How many CPU threads a job's torch operations use: the CPUs the job was given, less those busy
with other work when it starts, and one thread for training steps too small to share.

A training step of the fast trainer is hundreds of small operations. With more threads than free
cores, every parallel region waits for a thread the kernel has descheduled: on a 2-core machine
with one CPU-bound neighbour, 2 threads ran W1 of scripts/bench.py 3.7x slower than quiet, 1
thread 1.3x (an ad-hoc measurement; scripts/bench.py --contention --trainer-threads 2 repeats
it). So torch's default (every core of the machine) is replaced by:

- the job's allocation: the smallest of its affinity mask (what taskset, SLURM's task affinity
  and cgroup cpusets leave it), its cgroup CPU quota, SLURM_CPUS_PER_TASK, and the CPU list the
  local launcher gave it (engine/cpus.py);
- less the CPUs of that allocation that other processes kept busy over a short window at the
  start (/proc/stat), at least one;
- for training, one thread when the step's largest block is below SMALL_BLOCK elements: there a
  second thread gained at most 1.14x on a quiet machine (identity 5->2 x 8 restarts: 1.00x; x 64
  restarts, 327 680 elements: 1.57x; abs 100->40 x 1: 1.13x) and costs up to 3x under load.

The thread count changed no result we tried: the reductions here split their work by outputs,
not by thread (tests/test_threads.py trains and evaluates a run with 1 and 2 threads and compares
the bits; a single sum of one number over many elements could split by thread, and none was
seen to here).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from superposition.engine.batches import is_sparse
from superposition.engine.cpus import CpuAllocation, busy_cpus, cpu_allocation
from superposition.grid import InstanceGrid
from superposition.tasks.model import ModelSpec

# instances × rows × features of a step's largest block below which training uses one thread
SMALL_BLOCK = 1 << 17


@dataclass(frozen=True)
class ThreadPlan:
    """The job's thread counts (train: training steps; other: evaluation, analysis) and why."""

    train: int
    other: int
    cpus: int
    source: str
    busy: float
    requested: int
    largest_block: int

    def describe(self) -> str:
        """One line for the start of a job."""
        if self.requested:
            return f"threads: {self.requested} (train.threads={self.requested}; {self._cpus_text})"
        load = f", {self.busy:.1f} busy with other work" if self.busy >= 0.5 else ""
        text = f"threads: {self.other} ({self._cpus_text}{load})"
        if self.train != self.other:
            text += (
                f"; training {self.train}: its largest block, {self.largest_block:,} elements, "
                f"is below {SMALL_BLOCK:,}"
            )
        return text

    @property
    def _cpus_text(self) -> str:
        return f"{self.cpus} CPU{'s' if self.cpus != 1 else ''} in the {self.source}"

    def to_json(self) -> dict:
        return asdict(self) | {"busy": round(self.busy, 2)}


def largest_block(spec: ModelSpec, grid: InstanceGrid, batch_size: int) -> int:
    """Elements (instances × rows × features) of the largest per-step block of the fast
    trainer: a level's output block over the rows its batch packs (every row at a dense level,
    the rows with an active feature at a sparse one)."""
    largest = 0
    for p in grid.feature_probability.tolist():
        rows = batch_size
        if is_sparse(p, spec.n_features):
            rows = batch_size * -math.expm1(spec.n_features * math.log1p(-p))
        largest = max(largest, round(grid.restarts * rows * spec.n_features))
    return largest


def plan_threads(requested: int, block: int, allocation: CpuAllocation | None = None) -> ThreadPlan:
    """The thread counts for a job whose training's largest block has `block` elements;
    `requested` (train.threads) > 0 sets both."""
    allocation = allocation or cpu_allocation()
    if requested:
        return ThreadPlan(
            requested, requested, allocation.cpus, allocation.source, 0.0, requested, block
        )
    busy = 0.0
    if allocation.cpus > 1 and allocation.ids:
        # with a quota or a SLURM count below the mask, others may keep the rest of it busy
        outside = len(allocation.ids) - allocation.cpus
        busy = max(0.0, busy_cpus(allocation.ids) - outside)
    free = max(1, min(allocation.cpus, math.floor(allocation.cpus - busy + 0.5)))
    train = 1 if block < SMALL_BLOCK else free
    return ThreadPlan(train, free, allocation.cpus, allocation.source, busy, 0, block)


@contextmanager
def using(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
