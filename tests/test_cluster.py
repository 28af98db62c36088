"""The `cluster` group: which Hydra launcher a multirun uses, with what defaults; and a real
multirun through submitit's local executor (tests/test_slurm.py submits to SLURM)."""

from __future__ import annotations

import contextlib
import io
import json

from conftest import CONF_DIR, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from superposition.config import register_configs
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
    sweep = tmp_path / "sweep"
    done = run_cli(
        "-m",
        "task=identity",
        "model.d_hidden=2,3",
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
    assert f"started 2 jobs on this machine; waiting for them (sweep directory: {sweep}" in (
        done.stdout
    )
    # named after their overrides (sorted by key), not their job numbers
    job_dirs = sorted(sweep.glob("eval.batch_size=1024,model.d_hidden=*"))
    assert [d.name.split(",")[1] for d in job_dirs] == ["model.d_hidden=2", "model.d_hidden=3"]
    assert all((d / "results.json").is_file() for d in job_dirs)
    logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2
    assert all("Job completed successfully" in log.read_text() for log in logs)

    # followed and collected like any sweep: the manifest knows the local jobs' ids
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert manifest["submissions"][0]["launcher"] == "local"
    assert all(job["scheduler_id"] for job in manifest["jobs"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert sweep_command(["status", str(sweep)]) == 0
    assert out.getvalue().splitlines()[-1] == "2 jobs: 2 finished"
    with contextlib.redirect_stdout(io.StringIO()):
        assert sweep_command(["collect", str(sweep)]) == 0
    rows = (sweep / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("job,model.d_hidden,") and len(rows) == 1 + 2
