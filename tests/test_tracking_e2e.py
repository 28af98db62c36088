"""End to end: the CLI's own W&B offline runs, read back from disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from wandb_offline import offline_runs, read_offline_run

from superposition.engine.train import history_steps
from superposition.job import run_job
from superposition.run import to_config
from superposition.store.files import HISTORY, read_tensors
from superposition.store.progress import PROGRESS, read_progress
from superposition.track import STEP_KEY, history_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "task=identity",
    "sweep.feature_probability=[1.0,0.05]",
    "train.steps=40",
    "train.restarts=2",
    "train.batch_size=128",
    "train.log_every=10",
    "wandb.log_every=20",
    "eval.batch_size=1024",
]


def cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "wandb_home"
    env = {
        **os.environ,
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }
    env.pop("WANDB_MODE", None)
    return env


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def expected_history(out: Path, feature_probability: list[float]) -> dict[int, dict]:
    """The W&B rows of the job's loss record (history.safetensors), by training step."""
    record = read_tensors(out / HISTORY)
    rows = history_rows(record["steps"].tolist(), record["loss"], feature_probability, 20)
    return {step: {STEP_KEY: step, **row} for step, row in rows}


def assert_finished_progress(out: Path, total: int) -> None:
    progress = read_progress(out)
    assert progress.state == "finished"
    assert progress.step == progress.total == total
    assert progress.error is None


def test_offline_run_holds_history_figures_table_and_weights(tmp_path, compose_config):
    """Trained in chunks of 3 instances: the second level's restarts are split between the two
    chunks; its rows come with the second chunk, at W&B steps after the first chunk's."""
    out = tmp_path / "job"
    chunked = [*TINY, "train.chunk_size=3"]
    done = run_cli(tmp_path, *chunked, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    (run_dir,) = offline_runs(out)
    run = read_offline_run(run_dir)

    assert run["state"] == "finished"
    assert run["run"]["job_type"] == "identity"
    assert run["run"]["display_name"] == "identity_5to2"
    assert run["config"]["train"]["steps"] == 40
    assert run["config"]["sweep"]["feature_probability"] == [1.0, 0.05]

    # logged while training: the rows of the loss record, every level at every logged step
    assert run["train"] == expected_history(out, [1.0, 0.05])
    assert sorted(run["train"]) == [0, 20, 39]
    for row in run["train"].values():
        assert {"train/loss_best/p=1", "train/loss_mean/p=0.05"} <= set(row)
    trained = [step for step, row in sorted(run["history"].items()) if STEP_KEY in row]
    assert trained == [0, 20, 39, 40, 60, 79]  # W&B's step: chunk × train.steps + step
    assert summary_progress(run["summary"]) == (80, 80)
    assert_finished_progress(out, 80)
    # the job that finds the run finished says so again
    (out / PROGRESS).unlink()
    run_job(to_config(compose_config(*chunked)), out, run_name="again")
    assert_finished_progress(out, 80)
    results = json.loads((out / "results.json").read_text())
    figures = {p.stem for p in (out / "plots").glob("*.png")}
    assert {"features_2d", "loss", "dimensionality"} <= figures
    summary = run["summary"]
    assert all(summary[f"plots/{name}"]["_type"] == "image-file" for name in figures)
    assert summary["levels"]["_type"] == "table-file"
    assert summary["level/p=0.05/eval_loss"] == pytest.approx(results["levels"][1]["eval_loss"])
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "model"]
    assert set(artifact["files"]) == {"weights.safetensors", "results.json"}
    assert (
        artifact["files"]["weights.safetensors"]["size"]
        == (out / "weights.safetensors").stat().st_size
    )


def test_abs_run_records_the_signs_of_x_it_computes(tmp_path):
    out = tmp_path / "abs"
    done = run_cli(
        tmp_path,
        "task=abs",
        "model.n_features=12",
        "model.d_hidden=4",
        "sweep.feature_probability=[0.3]",
        "train.steps=40",
        "train.restarts=2",
        "eval.batch_size=1024",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    run = read_offline_run(offline_runs(out)[0])
    (level,) = json.loads((out / "results.json").read_text())["levels"]
    summary = run["summary"]
    for name in ("features_computed_both_signs", "features_computed_one_sign"):
        assert summary[f"level/p=0.3/{name}"] == level["metrics"][name]
    assert summary["plots/feature_loss"]["_type"] == "image-file"


def summary_progress(summary: dict) -> tuple[int, int]:
    assert summary["progress/steps_per_s"] > 0
    return summary["progress/step"], summary["progress/total"]


def test_history_reaches_wandb_while_the_job_trains(tmp_path):
    """A job stopped by SIGTERM mid-training: its W&B run already holds the rows of the steps it
    trained, the rows of its checkpointed loss record."""
    out = tmp_path / "stopped"
    steps = 200_000
    args = [*TINY, f"train.steps={steps}", "train.checkpoint_every=0", f"hydra.run.dir={out}"]
    job = subprocess.Popen(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=ROOT,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (progress := read_progress(out)) is None or progress.step == 0:
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the job never wrote progress"
            time.sleep(0.05)
        assert progress.state == "running" and progress.total == steps
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]

    stopped = read_progress(out)
    assert stopped.state == "interrupted" and stopped.total == steps
    assert 0 < stopped.step < steps
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert state["current"]["step"] == stopped.step
    recorded = history_steps(steps, 10)
    loss = state["current"]["history"].view(len(recorded), 2, 2)
    expected = {
        step: {STEP_KEY: step, **row}
        for step, row in history_rows(recorded, loss, [1.0, 0.05], 20)
        if step < stopped.step
    }
    run = read_offline_run(offline_runs(out)[0])
    assert run["exit_code"] == 1  # the job stopped
    assert run["train"] == expected
    assert 0 in run["train"] and max(run["train"]) < stopped.step
