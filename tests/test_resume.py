"""Checkpoints: interrupted runs resume to the weights of an uninterrupted run, finished runs are
not trained again, and checkpoints of another config or broken ones are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from superposition.config import TrainConfig
from superposition.engine.train import train_grid
from superposition.grid import sparsity_grid
from superposition.store.checkpoint import (
    CHECKPOINT,
    Checkpointer,
    CheckpointError,
    TrainingInterrupted,
)
from superposition.tasks.model import ModelSpec

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
SPEC = ModelSpec("abs", n_features=6, d_hidden=3)
GRID = sparsity_grid([1.0, 0.3, 0.05], n_features=6, decay=0.8, restarts=3)


def cfg(**overrides) -> TrainConfig:
    values = dict(steps=400, batch_size=256, log_every=25, lr=1e-2, chunk_size=4)
    values.update(overrides)
    return TrainConfig(**values)


def test_signal_mid_training_saves_and_resume_is_bit_identical(tmp_path):
    reference = train_grid(SPEC, GRID, cfg(), seed=0, device=CPU)

    checkpointer = Checkpointer(tmp_path, "fp", every=0)  # checkpoints on the signal alone
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(TrainingInterrupted) as stopped:
        train_grid(SPEC, GRID, cfg(), seed=0, device=CPU, checkpointer=checkpointer)
    timer.cancel()
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back

    saved = Checkpointer(tmp_path, "fp", every=0).load()
    assert saved["current"] is not None  # stopped inside a chunk
    resumed = train_grid(
        SPEC, GRID, cfg(), seed=0, device=CPU, checkpointer=checkpointer, saved=saved
    )
    for name, value in reference.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert torch.equal(resumed.loss_history, reference.loss_history)
    assert torch.equal(resumed.finite, reference.finite)


class KeepingCheckpointer(Checkpointer):
    """Also reads back every checkpoint right after it is written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written: list[dict] = []

    def save(self, state: dict) -> None:
        super().save(state)
        self.written.append(self.load())


def test_periodic_checkpoint_holds_the_state_at_that_step(tmp_path):
    checkpointer = KeepingCheckpointer(tmp_path, "fp", every=100)
    train_grid(SPEC, GRID, cfg(), seed=0, device=CPU, checkpointer=checkpointer)
    # the last periodic save is at step 400 of the last chunk (instances 8..8)
    periodic = checkpointer.written[-2]
    assert periodic["current"]["start"] == 8 and periodic["current"]["step"] == 400
    assert periodic["finished"]["finite"].shape == (8,)
    assert periodic["chunk_size"] == 4
    # then, whatever train.checkpoint_every says, the trained state: every chunk finished
    final = checkpointer.load()
    assert final["current"] is None and final["finished"]["finite"].shape == (9,)


def test_training_ends_with_its_state_saved_even_without_periodic_checkpoints(tmp_path):
    checkpointer = KeepingCheckpointer(tmp_path, "fp", every=0)
    trained = train_grid(SPEC, GRID, cfg(), seed=0, device=CPU, checkpointer=checkpointer)
    (final,) = checkpointer.written
    again = train_grid(SPEC, GRID, cfg(), seed=0, device=CPU, saved=final)
    for name, value in trained.params.items():
        assert torch.equal(again.params[name], value)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    Checkpointer(tmp_path, "aaaa", every=1).save({"anything": 1})
    with pytest.raises(CheckpointError, match="was written by another config"):
        Checkpointer(tmp_path, "bbbb", every=1).load()


def test_broken_checkpoint_is_refused(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is unreadable"):
        Checkpointer(tmp_path, "fp", every=1).load()


ARGS = [
    "task=identity",
    "train.steps=1500",
    "train.restarts=3",
    "train.batch_size=256",
    "sweep.feature_probability=[1.0,0.1]",
    "eval.batch_size=2048",
    "train.checkpoint_every=20",
    "wandb.mode=disabled",
]


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_cli_run_resumes_to_the_uninterrupted_weights(tmp_path):
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    job = start_cli(*ARGS, f"hydra.run.dir={interrupted}")
    deadline = time.monotonic() + 120
    while not (interrupted / CHECKPOINT).exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved to" in err
    assert not (interrupted / "results.json").exists()

    resumed = run_cli(*ARGS, f"hydra.run.dir={interrupted}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {interrupted / CHECKPOINT}" in resumed.stdout
    assert not (interrupted / CHECKPOINT).exists()
    assert run_cli(*ARGS, f"hydra.run.dir={whole}").returncode == 0
    a = load_file(str(interrupted / "weights.safetensors"))
    b = load_file(str(whole / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)

    # a finished run is not trained again
    stamp = (interrupted / "results.json").stat().st_mtime_ns
    again = run_cli(*ARGS, f"hydra.run.dir={interrupted}")
    assert again.returncode == 0
    assert "already finished, not trained again" in again.stdout
    assert (interrupted / "results.json").stat().st_mtime_ns == stamp

    # ... and another config is refused there, in one line
    other = run_cli(*ARGS, "seed=1", f"hydra.run.dir={interrupted}")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "holds a finished run of another config" in other.stderr


def test_cli_refuses_a_checkpoint_of_another_config(tmp_path):
    out = tmp_path / "run"
    Checkpointer(out, "0000", every=1).save({"anything": 1})
    done = run_cli(*ARGS, f"hydra.run.dir={out}")
    assert done.returncode == 2
    assert "was written by another config" in done.stderr.strip().splitlines()[-1]
    assert (out / CHECKPOINT).exists() and not (out / "results.json").exists()
