"""Faults of issue 11, each reproduced with real processes on real directories.

Every test starts the real command line (`python -m superposition.run`) in a subprocess; kills
are real signals, concurrent runs are real concurrent processes. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from safetensors.torch import load_file

# issue 11's `S`: a small run that finishes in seconds
SMALL = [
    "task=identity",
    "train.steps=50",
    "train.restarts=2",
    "sweep.feature_probability=[1.0,0.1]",
    "eval.batch_size=4096",
    "wandb.mode=disabled",
]


def one_line(stderr: str) -> str:
    """The one message line of stderr (training's progress bar aside)."""
    lines = [
        line
        for line in stderr.replace("\r", "\n").splitlines()
        if line.strip() and not re.match(r"train \d+ instances:", line)
    ]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def finished_run(out: Path, *extra: str) -> dict:
    done = run_cli(*SMALL, *extra, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


# ------------------------------------------------------------- 1. every instance diverges


@pytest.mark.parametrize("override", ["importance.decay=1e300", "train.lr=1e9"])
def test_a_run_where_every_instance_diverges_still_finishes(tmp_path, override):
    out = tmp_path / "diverged"
    done = run_cli(*SMALL, override, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: no restart of any level stayed finite" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["levels_without_finite_restart"] == [0, 1]
    assert all(level["best_restart"] is None for level in results["levels"])
    weights = load_file(str(out / "weights.safetensors"))
    assert all(bool(value.isnan().all()) for value in weights.values())
    assert (out / "plots" / "loss.png").is_file()
    again = run_cli(*SMALL, override, f"hydra.run.dir={out}")
    assert again.returncode == 0 and "already finished, not trained again" in again.stdout


# -------------------------------------------------------- 2. one writer per directory


def start_run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "superposition.run", *extra, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_training(out: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run holds its lock and has written a checkpoint (so it is past start-up)."""
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never checkpointed"
        time.sleep(0.05)


def test_a_second_run_on_a_busy_directory_is_refused(tmp_path):
    out = tmp_path / "shared"
    first = start_run(
        out,
        *SMALL,
        "train.steps=4000",
        "train.checkpoint_every=20",
    )
    try:
        wait_until_training(out, first)
        second = run_cli(*SMALL, "seed=1", f"hydra.run.dir={out}")
        line = one_line(second.stderr)
        assert second.returncode == 2
        assert line.startswith(f"error: {out} is in use by another run (pid {first.pid} on ")
        assert "choose another output directory" in line
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 0 and results["steps"] == 4000


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "killed"
    first = start_run(out, *SMALL, "train.steps=4000", "train.checkpoint_every=20")
    wait_until_training(out, first)
    first.kill()
    first.wait()
    assert finished_run(out, "train.steps=4000", "train.checkpoint_every=20")["steps"] == 4000


@pytest.mark.parametrize("tampered", ["weights.safetensors", "history.safetensors"])
def test_finished_results_must_match_their_files(tmp_path, tampered):
    out = tmp_path / "run"
    results = finished_run(out)
    assert set(results["files"]) == {"weights.safetensors", "history.safetensors"}
    other = tmp_path / "other"
    finished_run(other, "seed=1")
    (out / tampered).write_bytes((other / tampered).read_bytes())  # another run's file
    before = (out / "results.json").read_bytes()
    done = run_cli(*SMALL, f"hydra.run.dir={out}")
    line = one_line(done.stderr)
    assert done.returncode == 2
    assert f"{out / tampered} is missing or is not the file results.json was written with" in line
    assert "delete results.json in it to train again" in line
    assert (out / "results.json").read_bytes() == before
    (out / tampered).unlink()
    assert "is missing" in one_line(run_cli(*SMALL, f"hydra.run.dir={out}").stderr)


# ---------------------------------------------------------------- 6. broken results.json


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"levels": [', "cannot be read (JSONDecodeError)"),
        (b"", "cannot be read (JSONDecodeError)"),
        (b"\x00\xff\xfe binary", "cannot be read (UnicodeDecodeError)"),
        (b"[1, 2, 3]", "does not hold a run's results"),
        (b"null", "does not hold a run's results"),
        (None, "cannot be read (Is a directory)"),
    ],
)
def test_a_broken_results_json_is_refused_in_one_line(tmp_path, content, reason):
    out = tmp_path / "broken"
    out.mkdir()
    path = out / "results.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    done = run_cli(*SMALL, f"hydra.run.dir={out}")
    line = one_line(done.stderr)
    assert done.returncode == 2
    assert (
        line
        == f"error: {path} {reason}; move {out} away or delete results.json in it to train again"
    )
    assert not (out / "weights.safetensors").exists()
    if content is not None:
        assert path.read_bytes() == content


# ------------------------------------------------------------ 10. temporary files left behind


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    out = tmp_path / "leftovers"
    (out / "plots").mkdir(parents=True)
    stale = [
        out / ".checkpoint.pt.k2j3.tmp",
        out / ".results.json.x8a1.tmp",
        out / "plots" / ".loss.png.q0w9.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = out / "notes.tmp"  # not a name write_atomically makes
    keep.write_text("mine")
    done = run_cli(*SMALL, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(path.exists() for path in stale)
    assert keep.read_text() == "mine"
    assert f"removed {stale[0]}, left by an interrupted write" in done.stdout
    assert not list(out.rglob(".*.tmp"))


# ------------------------------------------------- 11. refusals and interrupts: one line each


def test_a_refusal_inside_the_job_is_one_line(tmp_path):
    out = tmp_path / "taken"
    finished_run(out)
    done = run_cli(*SMALL, "seed=1", f"hydra.run.dir={out}")
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"error: {out} holds a finished run of another config; choose another output "
        "directory (hydra.run.dir=...)"
    )


def test_an_interrupt_is_one_line(tmp_path):
    out = tmp_path / "stopped"
    run = start_run(out, *SMALL, "train.steps=4000", "train.checkpoint_every=20")
    wait_until_training(out, run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM
    assert one_line(stderr).startswith("interrupted: ")


# ------------------------------------------------------------------- 9. validation gaps


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.feature_probability=[1e-300]", "sweep.feature_probability must hold numbers in"),
        ("sweep.feature_probability=[[0.1]]", "sweep.feature_probability must hold numbers in"),
        ("train.memory_budget_mb=inf", "train.memory_budget_mb must be a finite number"),
        ("train.steps=99999999999999999999", "recorded losses per instance; at most 1000000"),
        ("task=null", "task=null: task takes a name, not null"),
        ("sweep.relative_importance=[1e39]", "(finite in float32), got 1e+39"),
        ("experiment=../task/abs", "experiment=../task/abs: a choice is a plain name; allowed:"),
        ("sweep=../../conf/task/abs", "a choice is a plain name; allowed: phase, sparsity"),
        ("seed=18446744073709551616", "seed must be in [0, 2^63), got 18446744073709551616"),
        ("seed=-1", "seed must be in [0, 2^63), got -1"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(tmp_path, override, message):
    out = tmp_path / "never"
    done = run_cli(*SMALL, override, f"hydra.run.dir={out}")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("error: ") and message in line
    assert not out.exists()


def test_seeds_at_the_ends_of_the_range_differ(tmp_path):
    """Seeds were folded into 64 bits: 2^64 gave seed 0's weights. Inside [0, 2^63) they differ."""
    weights = []
    for seed in (0, 2**63 - 1):
        finished_run(tmp_path / f"s{seed}", f"seed={seed}")
        weights.append(load_file(str(tmp_path / f"s{seed}" / "weights.safetensors"))["W"])
    assert not weights[0].equal(weights[1])


# ------------------------------------------------------------------------------- 12. smaller


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_empty_output_directory_is_refused(tmp_path, key):
    done = run_cli(*SMALL, f"{key}=", cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"error: {key} is empty; give a directory, or leave {key}= out for the default under "
        "outputs/"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("environment", ["disabled", "garbage", "online"])
def test_wandb_mode_decides_over_the_environment(tmp_path, environment):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": environment, "WANDB_SILENT": "true"}
    for name in ("CONFIG", "CACHE", "DATA"):
        env[f"WANDB_{name}_DIR"] = str(tmp_path / "wandb_home" / name.lower())
    args = [a for a in SMALL if not a.startswith("wandb.mode")]
    done = subprocess.run(
        [sys.executable, "-m", "superposition.run", *args, "wandb.mode=offline"]
        + [f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"warning: W&B: WANDB_MODE={environment} in the environment is ignored; "
        "wandb.mode=offline decides"
    ) in done.stderr
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
