"""The `cluster` group: which Hydra launcher a multirun uses, with what defaults; and a real
multirun through submitit's local executor (tests/test_slurm.py submits to SLURM)."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime

from conftest import CONF_DIR, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hydra_plugins.superposition_launchers.launchers import cpu_shares
from superposition.config import register_configs
from superposition.engine.cpus import cpu_allocation
from superposition.sweep.__main__ import main as sweep_command

LAUNCHERS = "hydra_plugins.superposition_launchers.launchers"


def launcher(*overrides: str):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


def test_without_cluster_jobs_run_in_process():
    assert launcher()._target_ == f"{LAUNCHERS}.InProcessLauncher"


def test_slurm_defaults_ask_for_one_gpu_and_requeue(monkeypatch):
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    slurm = launcher("cluster=slurm")
    assert slurm._target_ == f"{LAUNCHERS}.SlurmSweepLauncher"
    assert slurm.wait is False  # returns once the jobs are queued
    assert slurm.gpus_per_node == 1 and slurm.cpus_per_task >= 1 and slurm.mem_gb >= 1
    assert slurm.partition is None  # the cluster's default partition
    assert slurm.signal_delay_s > 0 and slurm.max_num_timeout > 0
    assert slurm.timeout_min > 0 and slurm.array_parallelism >= 1
    assert OmegaConf.to_container(slurm)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


def test_slurm_settings_come_from_the_environment_and_the_command_line(monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    assert launcher("cluster=slurm").partition == "gpu"
    slurm = launcher(
        "cluster=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.account=proj1",
        "+hydra.launcher.additional_parameters.reservation=r1",
    )
    assert (slurm.partition, slurm.gpus_per_node, slurm.account) == ("debug", 0, "proj1")
    assert slurm.additional_parameters == {"reservation": "r1"}


def test_local_launcher_gets_no_slurm_keys():
    local = launcher("cluster=local")
    assert local._target_ == f"{LAUNCHERS}.LocalSweepLauncher"
    assert "partition" not in local and "array_parallelism" not in local and "wait" not in local


def test_unknown_cluster_is_refused():
    done = run_cli("cluster=nope", "wandb.mode=disabled")
    assert done.returncode == 2
    assert "cluster=nope is not a known choice; allowed: in_process, local, slurm" in done.stderr


def test_local_multirun_runs_every_job_in_its_own_process(tmp_path):
    """Three jobs on a machine with two CPUs here: two at a time, each pinned to one CPU."""
    cpus = cpu_allocation(pin=False).cpus
    sweep = tmp_path / "sweep"
    done = run_cli(
        "-m",
        "task=identity",
        "model.d_hidden=2,3,4",
        "train.steps=30",
        "train.restarts=2",
        "eval.batch_size=1024",
        "sweep.feature_probability=[1.0]",
        "wandb.mode=disabled",
        "cluster=local",
        "hydra.launcher.gpus_per_node=0",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 0, done.stderr
    at_once = min(3, cpus)
    pace = f", {at_once} at a time" if at_once < 3 else ""
    assert f"started 3 jobs on this machine{pace}; waiting for them (sweep directory: {sweep}" in (
        done.stdout
    )
    # named after their overrides (sorted by key), not their job numbers
    job_dirs = sorted(sweep.glob("eval.batch_size=1024,model.d_hidden=*"))
    names = [d.name.split(",")[1] for d in job_dirs]
    assert names == ["model.d_hidden=2", "model.d_hidden=3", "model.d_hidden=4"]
    results = [json.loads((d / "results.json").read_text()) for d in job_dirs]
    # each job used its share of the CPUs, and said so
    assert all(r["threads"]["source"] == "local launcher share" for r in results)
    assert all(r["threads"]["cpus"] == cpus // at_once for r in results)
    logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 3
    assert all("Job completed successfully" in log.read_text() for log in logs)
    assert all("in the local launcher share" in log.read_text() for log in logs)
    # never more jobs at once than the machine has CPUs: their lifetimes from submitit's logs
    spans = [job_span(log.read_text()) for log in logs]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= at_once, spans

    # followed and collected like any sweep: the manifest knows the local jobs' ids
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert manifest["submissions"][0]["launcher"] == "local"
    assert all(job["scheduler_id"] for job in manifest["jobs"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert sweep_command(["status", str(sweep)]) == 0
    assert out.getvalue().splitlines()[-1] == "3 jobs: 3 finished"
    with contextlib.redirect_stdout(io.StringIO()):
        assert sweep_command(["collect", str(sweep)]) == 0
    rows = (sweep / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("job,model.d_hidden,") and len(rows) == 1 + 3


def job_span(log: str) -> tuple[datetime, datetime]:
    """(start, end) of a local job from submitit's log lines."""
    stamps = [
        datetime.strptime(line.split("(", 1)[1][:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in log.splitlines()
        if line.startswith("submitit INFO (")
    ]
    return stamps[0], stamps[-1]


def test_local_jobs_share_the_cpus_at_most_one_job_per_cpu():
    sixteen = list(range(16))
    assert cpu_shares(sixteen, 16, 4, 0) == ["0,1,2,3", "4,5,6,7", "8,9,10,11", "12,13,14,15"]
    assert cpu_shares(sixteen, 16, 40, 0) == [str(cpu) for cpu in sixteen]
    assert cpu_shares(sixteen, 16, 40, 2) == ["0,1,2,3,4,5,6,7", "8,9,10,11,12,13,14,15"]
    assert cpu_shares(sixteen, 16, 1, 0) == [",".join(map(str, sixteen))]
    assert cpu_shares([0, 1, 2], 3, 2, 0) == ["0", "1"]  # equal shares, the rest unused
    # a cgroup quota of 2 CPUs over a mask of 16: two jobs at once, one CPU each
    assert cpu_shares(sixteen, 2, 40, 0) == ["0", "1"]
    assert launcher("cluster=local").max_parallel == 0
