"""Multiruns submitted to a real SLURM cluster through `cluster=slurm` (hydra-submitit-launcher).

Needs a running cluster: `bash scripts/slurm_up.sh` starts a one-node one on this machine (CI does).
Without one, every test here is skipped with that reason. The jobs ask for no GPU, one CPU and
1 GB each, so that they fit on a small machine.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb_offline import offline_runs, read_offline_run

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
READY_STATES = {"idle", "mixed", "allocated", "completing"}
TINY = [
    "model.n_features=6",
    "train.steps=30",
    "train.restarts=2",
    "eval.batch_size=1024",
    "sweep.feature_probability=[1.0,0.1]",
]
# what a job asks of the one-node development cluster (no GPU there)
SMALL_JOBS = [
    "cluster=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


def slurm_problem() -> str | None:
    """Why no SLURM cluster can take jobs here, or None when one can."""
    if shutil.which("sinfo") is None:
        return "sinfo not found"
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        return "sinfo gave no answer in 5 s"
    if done.returncode != 0:
        return f"sinfo failed: {' '.join(done.stderr.split())}"
    if not set(done.stdout.split()) & READY_STATES:
        return f"no node idle or mixed; node states: {' '.join(done.stdout.split()) or 'none'}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = slurm_problem()
    if problem:
        pytest.skip(f"SLURM is not running ({problem}): start it with bash scripts/slurm_up.sh")


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The submitter's environment, which sbatch hands on to the jobs: W&B kept in tmp_path."""
    home = tmp_path / "wandb_home"
    env = {
        **os.environ,
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }
    env.pop("WANDB_MODE", None)
    env.pop("SLURM_PARTITION", None)  # the development cluster's default partition
    return env


def multirun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "superposition.run", "-m", *args],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )


def job_dirs(sweep: Path) -> list[Path]:
    """The jobs' output directories, in job order (the manifest's)."""
    manifest = json.loads((sweep / "manifest.json").read_text())
    return [sweep / job["dir"] for job in sorted(manifest["jobs"], key=lambda job: job["num"])]


def sweep_status(sweep: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "superposition.sweep", "status", str(sweep), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status_when_settled(sweep: Path, timeout: float = 240) -> dict:
    """`sweep status` polled until no job is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        status = sweep_status(sweep)
        if not {job["state"] for job in status["jobs"]} & {"queued", "running"}:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(1)


def array_id(sweep: Path) -> str:
    """The SLURM id of the multirun's job array, read from submitit's folder."""
    (submission,) = (sweep / ".submitit").glob("*/*_submission.sh")
    return submission.parent.name


def sacct_states(job_id: str) -> dict[str, str]:
    """{job or array task id: state} as SLURM's accounting has it."""
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split("|", 1) for line in done.stdout.split())


def wait_for_states(job_id: str, count: int, timeout: float = 30) -> dict[str, str]:
    """sacct's states once `count` jobs are recorded as finished (it may lag a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(job_id)
        finished = [s for s in states.values() if s not in {"PENDING", "RUNNING", "REQUEUED"}]
        if len(finished) >= count or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_a_sweep_is_submitted_and_left_then_followed_and_grown(tmp_path):
    sweep = tmp_path / "sweep"
    sweep_args = ["task=identity,abs", *TINY, *SMALL_JOBS, f"hydra.sweep.dir={sweep}"]
    done = multirun(tmp_path, *sweep_args, "model.d_hidden=2")
    assert done.returncode == 0, done.stderr
    array = array_id(sweep)
    assert done.stdout.splitlines()[-4:] == [
        f"submitted 2 jobs to SLURM as array job {array}; they run without this command "
        "(hydra.launcher.wait=true waits for them)",
        f"sweep directory: {sweep}",
        f"  status:  python -m superposition.sweep status {sweep}",
        f"  collect: python -m superposition.sweep collect {sweep}",
    ]
    # returned while the array is still queued or starting: a job takes seconds to start
    assert {job["state"] for job in sweep_status(sweep)["jobs"]} & {"queued", "running"}
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert manifest["submissions"][0]["scheduler_job_id"] == array
    assert [job["scheduler_id"] for job in manifest["jobs"]] == [f"{array}_0", f"{array}_1"]

    # submitted with sbatch as one array, each task with its pickles and logs
    script = (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert re.search(r"^#SBATCH --array=0-1%\d+$", script, re.M), script
    assert "#SBATCH --gpus-per-node=0" in script
    status = status_when_settled(sweep)
    assert status["total"] == "2 jobs: 2 finished", status
    for task in range(2):
        folder = sweep / ".submitit" / f"{array}_{task}"
        assert (folder / f"{array}_{task}_0_result.pkl").is_file()
        log = (folder / f"{array}_{task}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={array}_{task}," in log
    assert wait_for_states(array, 2) == {f"{array}_{task}": "COMPLETED" for task in range(2)}

    # the same sweep with one more swept value: only its two new jobs are submitted
    first_dirs = job_dirs(sweep)
    finished = {d: (d / "results.json").read_bytes() for d in first_dirs}
    grown = multirun(tmp_path, *sweep_args, "model.d_hidden=2,3")
    assert grown.returncode == 0, grown.stderr
    assert f"2 of 4 jobs already finished in {sweep}: not launched again" in grown.stdout
    assert "submitted 2 jobs to SLURM" in grown.stdout
    status = status_when_settled(sweep)
    assert status["total"] == "4 jobs: 4 finished", status
    assert all((d / "results.json").read_bytes() == content for d, content in finished.items())

    # every job wrote its results in its own directory, named after its overrides
    dirs = job_dirs(sweep)
    expected = [("identity", 2), ("abs", 2), ("identity", 3), ("abs", 3)]
    assert dirs[:2] == first_dirs
    for job_dir, (task, d_hidden) in zip(dirs, expected, strict=True):
        assert f"model.d_hidden={d_hidden}," in job_dir.name and f"task={task}" in job_dir.name
        results = json.loads((job_dir / "results.json").read_text())
        assert (results["task"], results["d_hidden"], results["n_features"]) == (task, d_hidden, 6)

    # the offline W&B runs of all jobs share one group: the sweep directory's last two parts
    runs = [read_offline_run(offline_runs(job_dir)[-1])["run"] for job_dir in dirs]
    assert {run["run_group"] for run in runs} == {f"{sweep.parent.name}_{sweep.name}"}

    # collected into one result, with the sweep's W&B run in the same group
    collected = subprocess.run(
        [sys.executable, "-m", "superposition.sweep", "collect", str(sweep)],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2
    assert {(row["task"], row["model.d_hidden"]) for row in rows} == {
        (task, str(d_hidden)) for task, d_hidden in expected
    }
    assert "4 jobs: 4 finished" in (sweep / "sweep.md").read_text()
    assert (sweep / "plots" / "metrics.png").is_file()
    (sweep_run,) = offline_runs(sweep)
    run = read_offline_run(sweep_run)["run"]
    assert (run["job_type"], run["run_group"]) == ("sweep", f"{sweep.parent.name}_{sweep.name}")


def test_a_failing_job_fails_the_sweep_and_the_others_finish(tmp_path):
    sweep = tmp_path / "sweep"
    # train.restarts=0 passes composition and is refused by the job itself, on the cluster
    done = multirun(
        tmp_path,
        "task=identity",
        *TINY,
        "train.restarts=2,0",
        *SMALL_JOBS,
        "hydra.launcher.wait=true",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: train.restarts must be >= 1, got 0" in done.stderr
    assert re.search(r"Error executing job with overrides: \[.*'train.restarts=0'", done.stderr)

    ok, failed = job_dirs(sweep)
    assert (ok / "results.json").is_file() and (ok / "weights.safetensors").is_file()
    assert not (failed / "results.json").exists()
    array = array_id(sweep)
    assert (sweep / ".submitit" / f"{array}_1" / f"{array}_1_0_result.pkl").is_file()
    status = sweep_status(sweep)
    assert [job["state"] for job in status["jobs"]] == ["finished", "failed"]
    assert status["jobs"][1]["detail"] == "error: train.restarts must be >= 1, got 0"


def test_a_signalled_job_is_requeued_and_finishes(tmp_path):
    """SIGUSR2 is what SLURM sends `signal_delay_s` before the time limit (and what submitit
    treats as preemption): submitit requeues the job, which runs again in the same directory."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "superposition.run",
        "-m",
        "task=identity",
        *TINY,
        "train.steps=600",
        *SMALL_JOBS,
        "hydra.launcher.wait=true",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    ]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            # the job has started once Hydra made its output directory (submitit's signal
            # handlers are in place before that)
            deadline = time.monotonic() + 120
            while not list(sweep.glob("*/.hydra")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the job did not start within 120 s"
                time.sleep(0.2)
            job = array_id(sweep)
            subprocess.run(["scancel", f"--signal={signal.SIGUSR2.name[3:]}", job], check=True)
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stdout + stderr

    log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in log
    assert f"Requeued job {job}" in log
    assert log.count(f"JobEnvironment(job_id={job},") == 2  # started twice
    assert "Job completed successfully" in log
    (job_dir,) = job_dirs(sweep)
    assert json.loads((job_dir / "results.json").read_text())["steps"] == 600
    assert wait_for_states(job, 1) == {job: "COMPLETED"}
    (status,) = sweep_status(sweep)["jobs"]
    assert (status["state"], status["requeues"]) == ("finished", 1)


def test_a_refused_submission_is_one_line_and_records_no_job(tmp_path):
    sweep = tmp_path / "sweep"
    done = multirun(
        tmp_path,
        "task=identity",
        *TINY,
        *SMALL_JOBS,
        "hydra.launcher.partition=no_such_partition",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: sbatch: error: ") and "partition" in line
    assert not (sweep / "manifest.json").exists()
