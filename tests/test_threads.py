"""The thread policy (engine/cpus.py, engine/threads.py): the CPUs a job was given, read in
real processes with real affinity masks, environment variables and CPU-bound neighbours; and a
job's results, bit for bit the same whatever its thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from superposition.engine.cpus import (
    CpuAllocation,
    CpuListError,
    _cgroup_quota,
    format_cpu_list,
    parse_cpu_list,
)
from superposition.engine.threads import SMALL_BLOCK, largest_block, plan_threads
from superposition.grid import sparsity_grid
from superposition.tasks.model import ModelSpec

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity"), reason="affinity masks are Linux's"
)
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
# a cgroup CPU quota below the mask (a container's --cpus) caps every allocation below
QUOTA = _cgroup_quota()
UNCAPPED = pytest.mark.skipif(
    QUOTA is not None and QUOTA < len(CPUS), reason="a cgroup CPU quota caps the mask here"
)
REPORT_ALLOCATION = (
    "import json, os; from superposition.engine.cpus import cpu_allocation; a = cpu_allocation(); "
    "print(json.dumps([a.cpus, a.source, sorted(os.sched_getaffinity(0))]))"
)


def allocation_in_child(env: dict[str, str], cpus: set[int] | None = None) -> list:
    """(cpus, source, affinity after) of cpu_allocation() in a fresh process."""
    preexec = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUPERPOSITION_"))}
    done = subprocess.run(
        [sys.executable, "-c", REPORT_ALLOCATION],
        env=clean | env,
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_cpu_lists_read_and_write_the_kernels_format():
    assert parse_cpu_list("0-3,6") == {0, 1, 2, 3, 6}
    assert parse_cpu_list("5") == {5}
    assert format_cpu_list({3, 1, 2}) == "1,2,3"
    with pytest.raises(CpuListError, match="SUPERPOSITION_CPUS='a-b' is not a CPU list"):
        parse_cpu_list("a-b")


@UNCAPPED
def test_the_allocation_is_the_affinity_mask():
    assert allocation_in_child({}) == [len(CPUS), "affinity mask", CPUS]
    assert allocation_in_child({}, cpus={CPUS[0]}) == [1, "affinity mask", [CPUS[0]]]


@UNCAPPED
def test_the_local_launchers_share_pins_the_job():
    share = str(CPUS[-1])
    got = allocation_in_child({"SUPERPOSITION_CPUS": share})
    assert got == [1, "local launcher share", [CPUS[-1]]]


@UNCAPPED
@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs in the affinity mask")
def test_slurm_cpus_per_task_caps_the_allocation_inside_a_slurm_job():
    cap = {"SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_ID": "7"}
    assert allocation_in_child(cap)[:2] == [1, "SLURM"]
    # outside a SLURM job (no SLURM_JOB_ID) the variable is not the job's
    assert allocation_in_child({"SLURM_CPUS_PER_TASK": "1"})[:2] == [len(CPUS), "affinity mask"]


def test_a_small_training_step_gets_one_thread_and_an_explicit_count_wins():
    two = CpuAllocation(2, None, "affinity mask")  # no CPU ids: nothing to watch, none busy
    plan = plan_threads(0, SMALL_BLOCK - 1, two)
    assert (plan.train, plan.other) == (1, 2)
    assert "training 1: its largest block, 131,071 elements, is below 131,072" in plan.describe()
    plan = plan_threads(0, SMALL_BLOCK, two)
    assert (plan.train, plan.other) == (2, 2)
    assert plan.describe() == "threads: 2 (2 CPUs in the affinity mask)"
    plan = plan_threads(3, 10, two)
    assert (plan.train, plan.other, plan.requested) == (3, 3, 3)
    assert plan.describe() == "threads: 3 (train.threads=3; 2 CPUs in the affinity mask)"
    assert plan_threads(0, 10**9, CpuAllocation(1, None, "SLURM")).train == 1


def test_the_largest_block_follows_the_rows_a_batch_packs():
    spec = ModelSpec(task="identity", n_features=200, d_hidden=20)
    dense = sparsity_grid([1.0, 0.3], 200, 1.0, restarts=4)
    assert largest_block(spec, dense, 1024) == 4 * 1024 * 200
    sparse = sparsity_grid([0.001], 200, 1.0, restarts=4)
    rows_with_an_entry = 1024 * (1 - 0.999**200)  # 186 of 1024
    assert largest_block(spec, sparse, 1024) == round(4 * rows_with_an_entry * 200)


def spin_on(cpu: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs in the affinity mask")
def test_cpus_kept_busy_by_other_processes_are_left_to_them():
    allocation = CpuAllocation(2, frozenset(CPUS[:2]), "affinity mask")
    neighbours = [spin_on(cpu) for cpu in CPUS[:2]]
    try:
        time.sleep(0.3)
        plan = plan_threads(0, 10**9, allocation)
    finally:
        for neighbour in neighbours:
            neighbour.kill()
            neighbour.wait()
    assert plan.busy >= 1.5
    assert (plan.train, plan.other) == (1, 1)
    assert "busy with other work" in plan.describe()


SMALL = [
    "task=abs",
    "model.n_features=20",
    "model.d_hidden=8",
    "sweep.feature_probability=[1.0,0.03]",
    "train.restarts=2",
    "train.steps=60",
    "eval.batch_size=4096",
    "wandb.mode=disabled",
]


def test_the_thread_count_is_printed_recorded_and_changes_no_result(tmp_path):
    runs = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        done = run_cli(*SMALL, f"train.threads={threads}", f"hydra.run.dir={out}")
        assert done.returncode == 0, done.stderr
        assert f"threads: {threads} (train.threads={threads};" in done.stdout
        runs[threads] = out
    one, two = (json.loads((runs[t] / "results.json").read_text()) for t in (1, 2))
    assert one["threads"]["train"] == one["threads"]["other"] == 1
    assert two["threads"]["train"] == two["threads"]["other"] == 2
    assert (runs[1] / "weights.safetensors").read_bytes() == (
        runs[2] / "weights.safetensors"
    ).read_bytes()
    assert [lv["eval_loss"] for lv in one["levels"]] == [lv["eval_loss"] for lv in two["levels"]]
    assert one["config_fingerprint"] == two["config_fingerprint"]
    # the same run with another thread count: already finished, not trained again
    again = run_cli(*SMALL, "train.threads=2", f"hydra.run.dir={runs[1]}")
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_negative_thread_count_is_refused_in_one_line(tmp_path):
    done = run_cli(*SMALL, "train.threads=-1", f"hydra.run.dir={tmp_path / 'out'}")
    assert done.returncode != 0
    assert done.stderr.strip() == "error: train.threads must be >= 0 (0 = automatic), got -1"
    assert not (tmp_path / "out").exists()
