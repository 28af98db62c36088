"""Faults of issue 11, each reproduced with real processes on real directories.

Every test starts the real command line (`python -m superposition.run`) in a subprocess, except
the refusals of bad values, which call the same entry point in this process; kills are real
signals, concurrent runs are real concurrent processes. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from safetensors.torch import load_file

import superposition.run as run_module
from superposition.store.checkpoint import StopSignals, TrainingInterrupted, state_digest

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


@pytest.fixture(scope="module")
def two_finished_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished runs of SMALL, seeds 0 and 1 (copy before changing them)."""
    base = tmp_path_factory.mktemp("finished")
    finished_run(base / "run")
    finished_run(base / "other", "seed=1")
    return base / "run", base / "other"


@pytest.mark.parametrize("tampered", ["weights.safetensors", "history.safetensors"])
def test_finished_results_must_match_their_files(tmp_path, tampered, two_finished_runs):
    run, other = two_finished_runs
    out = tmp_path / "run"
    shutil.copytree(run, out)
    results = json.loads((out / "results.json").read_text())
    assert set(results["files"]) == {"weights.safetensors", "history.safetensors"}
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
        (b'{"task": "identity", "levels": []}', "does not hold a run's results (no 'n_features')"),
        (
            b'{"format": 99, "levels": []}',
            "is in results format 99, which this version cannot read (formats 1 to 3); read it "
            "with the version that wrote it",
        ),
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
        ("preset=../task/abs", "preset=../task/abs: a choice is a plain name; allowed:"),
        ("sweep=../../conf/task/abs", "a choice is a plain name; allowed: phase, sparsity"),
        ("seed=18446744073709551616", "seed must be in [0, 2^63), got 18446744073709551616"),
        ("seed=-1", "seed must be in [0, 2^63), got -1"),
        ("model.n_features=100000000", "not enough memory: one instance needs about"),
        ("train.batch_size=1000000000", "GiB free; lower train.batch_size or the model sizes"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, override, message
):
    """The real entry point, in this process (a subprocess per case would cost seconds each;
    test_cli.py runs one through the command line)."""
    out = tmp_path / "never"
    argv = ["superposition.run", *SMALL, override, f"hydra.run.dir={out}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        run_module.main()
    assert exit_info.value.code == 2
    line = one_line(capsys.readouterr().err)
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


def run_with_wandb(tmp_path: Path, mode: str, **environment: str) -> subprocess.CompletedProcess:
    """A SMALL run into tmp_path/run with wandb.mode=mode, W&B's folders under tmp_path, the
    given environment variables set and no WANDB_MODE / WANDB_SILENT but those given."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SILENT")}
    env.update(environment)
    for name in ("CONFIG", "CACHE", "DATA"):
        env[f"WANDB_{name}_DIR"] = str(tmp_path / "wandb_home" / name.lower())
    args = [a for a in SMALL if not a.startswith("wandb.mode")]
    return subprocess.run(
        [sys.executable, "-m", "superposition.run", *args, f"wandb.mode={mode}"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("environment", ["disabled", "garbage", "online"])
def test_wandb_mode_decides_over_the_environment(tmp_path, environment):
    out = tmp_path / "run"
    done = run_with_wandb(tmp_path, "offline", WANDB_MODE=environment, WANDB_SILENT="true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"warning: W&B: WANDB_MODE={environment} in the environment is ignored; "
        "wandb.mode=offline decides"
    ) in done.stderr
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1


# ---------------------------------------------------- 5. a stop after training keeps training


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


SLOW_EVALUATION = [*SMALL, "train.checkpoint_every=0", "eval.batch_size=3000000"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    reference = tmp_path_factory.mktemp("uninterrupted") / "run"
    finished_run(reference, *SLOW_EVALUATION[len(SMALL) :])
    return reference


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_after_training_keeps_the_training(tmp_path, signum, uninterrupted):
    """checkpoint_every=0: the only checkpoint is the one written when training ends; a large
    held-out batch keeps the job in evaluation for seconds after it."""
    slow_evaluation = SLOW_EVALUATION
    reference = uninterrupted
    out = tmp_path / "stopped"
    run = start_run(out, *slow_evaluation)
    wait_for(out / "checkpoint.pt", run)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, stderr[-3000:]
    assert one_line(stderr).startswith(f"interrupted: stopped by {signal.Signals(signum).name}")
    assert "Traceback" not in stderr
    assert (out / "checkpoint.pt").exists() and not (out / "results.json").exists()
    again = run_cli(*slow_evaluation, f"hydra.run.dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    # the progress bar starts full: no training step is taken again
    assert re.search(r"train \d+ instances: 100%", again.stderr)
    assert not re.search(r"train \d+ instances: +\d%", again.stderr)
    for name in ("weights.safetensors", "history.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


# ------------------------------------------------- 3. a checkpoint is verified before use

STOPPABLE = [*SMALL, "train.steps=4000", "train.checkpoint_every=20"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """The output directory of a run stopped by SIGTERM mid-training: it holds a checkpoint."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    run = start_run(out, *STOPPABLE)
    wait_until_training(out, run)
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM
    return out


def edited_checkpoint(stopped_run: Path, tmp_path: Path, edit, redigest: bool = True) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    path = out / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    edit(payload["state"])
    if redigest:  # as a careful hand would: the digest then holds, the fields must be checked
        payload["digest"] = state_digest(payload["state"])
    torch.save(payload, path)
    return out


def refused_as_is(out: Path, expected: str) -> None:
    before = (out / "checkpoint.pt").read_bytes()
    done = run_cli(*STOPPABLE, f"hydra.run.dir={out}")
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert line.startswith("error: ") and expected in line, line
    assert "delete" in line and "start this run over" in line
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "results.json").exists()


def nudge_a_weight(state: dict) -> None:
    state["current"]["params"]["W"][0, 0, 0] += 1e-3


def test_a_checkpoint_changed_after_writing_is_refused(stopped_run, tmp_path):
    out = edited_checkpoint(stopped_run, tmp_path, nudge_a_weight, redigest=False)
    refused_as_is(out, "does not match the digest it was written with")


def test_a_flipped_bit_is_refused(stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    data = bytearray((out / "checkpoint.pt").read_bytes())
    # a bit of the weights themselves (padding between the file's records is never read)
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["current"]["params"]
    at = bytes(data).find(weights["W"].numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    (out / "checkpoint.pt").write_bytes(bytes(data))
    before = bytes(data)
    done = run_cli(*STOPPABLE, f"hydra.run.dir={out}")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "is unreadable" in line or "does not match the digest" in line, line
    assert (out / "checkpoint.pt").read_bytes() == before


def set_step(step):
    def edit(state: dict) -> None:
        state["current"]["step"] = step

    return edit


def drop_w(state: dict) -> None:
    del state["current"]["params"]["W"]


def widen_w(state: dict) -> None:
    state["current"]["params"]["W"] = torch.zeros(4, 3, 5)


def double_w(state: dict) -> None:
    state["current"]["params"]["W"] = state["current"]["params"]["W"].double()


def zero_chunks(state: dict) -> None:
    state["chunk_size"] = 0


@pytest.mark.parametrize(
    "edit, expected",
    [
        (set_step(10**6), "step 1000000 outside 0 .. 4000"),
        (set_step(-5), "step -5 outside 0 .. 4000"),
        (drop_w, "current chunk: parameters"),
        (widen_w, "current chunk: W is not float32 of shape (4, 2, 5)"),
        (double_w, "current chunk: W is not float32 of shape (4, 2, 5)"),
        (zero_chunks, "chunk_size 0"),
    ],
    ids=["step_too_large", "step_negative", "missing_key", "wrong_shape", "float64", "chunk_0"],
)
def test_a_checkpoint_that_does_not_fit_the_run_is_refused(stopped_run, tmp_path, edit, expected):
    refused_as_is(edited_checkpoint(stopped_run, tmp_path, edit), expected)


def test_the_unedited_checkpoint_resumes(stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    done = run_cli(*STOPPABLE, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout


# ------------------------------------------- 7, 8. unusable output directories, full disks


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 24 MiB (root and mount rights needed: skipped where there are none)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("where", ["a_file", "under_a_file", "proc"])
def test_an_unusable_output_directory_is_one_line(tmp_path, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = {"a_file": a_file, "under_a_file": a_file / "run", "proc": Path("/proc/no/run")}[where]
    done = run_cli(*SMALL, f"hydra.run.dir={out}")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith(f"error: output directory {out} cannot be used: ")
    assert a_file.read_text() == "not a directory"


def test_a_read_only_or_full_disk_is_refused_before_training(small_disk):
    filler = fill(small_disk)
    done = run_cli(*SMALL, f"hydra.run.dir={small_disk / 'run'}")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith(f"error: no space left on device: {small_disk}/run")
    assert not (small_disk / "run").exists()
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    done = run_cli(*SMALL, f"hydra.run.dir={small_disk / 'run'}")
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"error: output directory {small_disk / 'run'} cannot be used: Read-only file system"
    )


def test_a_disk_that_fills_during_training_is_one_line_and_keeps_the_checkpoint(small_disk):
    out = small_disk / "run"
    run = start_run(out, *STOPPABLE)
    wait_until_training(out, run)
    filler = fill(small_disk)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr[-3000:]
    line = one_line(stderr)
    assert line.startswith("error: no space left on device: ") and str(out) in line
    assert "run the same command again" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["current"]["step"] > 0
    assert not list(out.rglob(".*.tmp"))
    filler.unlink()
    done = run_cli(*STOPPABLE, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout


# ------------------------------------------------------------------------ kill anywhere

KILLABLE = [*SMALL, "train.steps=1500", "train.checkpoint_every=100", "eval.batch_size=400000"]
KILLS = 6


def test_killed_anywhere_and_rerun_ends_bit_identical(tmp_path):
    """SIGKILL at random moments (start-up, training, checkpoint writes, evaluation, figures,
    the final writes), a rerun after each; every sequence that finishes matches an uninterrupted
    run bit for bit and leaves no temporary file."""
    reference = tmp_path / "reference"
    started = time.monotonic()
    finished_run(reference, *KILLABLE[len(SMALL) :])
    wall = time.monotonic() - started
    expected = {
        name: (reference / name).read_bytes()
        for name in ("weights.safetensors", "history.safetensors")
    }
    expected_levels = json.loads((reference / "results.json").read_text())["levels"]
    chance = random.Random(0)
    kills, sequences = 0, 0
    while kills < KILLS:
        assert sequences < 3 * KILLS, f"only {kills} kills in {sequences} sequences"
        out = tmp_path / f"sequence{sequences}"
        sequences += 1
        while not (out / "results.json").exists():
            fresh = not out.exists()
            run = start_run(out, *KILLABLE)
            started = time.monotonic()
            try:
                run.wait(timeout=chance.uniform(0.2, 1.0) * wall)
            except subprocess.TimeoutExpired:
                run.kill()
                kills += 1
            else:
                if fresh:  # the machine is faster than when the reference ran: aim earlier
                    wall = time.monotonic() - started
            _, stderr = run.communicate()
            assert run.returncode in (0, -signal.SIGKILL), stderr[-3000:]
        for name, content in expected.items():
            assert (out / name).read_bytes() == content, f"{out / name} after {kills} kills"
        levels = json.loads((out / "results.json").read_text())["levels"]
        assert levels == expected_levels
        assert not list(out.rglob(".*.tmp"))
        assert not (out / "checkpoint.pt").exists()


# --------------------------------------------------- 4. a refused run leaves .hydra/ alone


def hydra_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / ".hydra").iterdir())}


def test_a_refused_run_does_not_rewrite_the_recorded_config(tmp_path):
    out = tmp_path / "kept"
    finished_run(out)
    recorded = hydra_files(out)
    assert "overrides.yaml" in recorded
    done = run_cli(*SMALL, "seed=1", f"hydra.run.dir={out}")
    assert done.returncode == 2 and "holds a finished run of another config" in done.stderr
    assert hydra_files(out) == recorded


def test_a_refused_checkpoint_or_busy_directory_does_not_rewrite_the_recorded_config(tmp_path):
    out = tmp_path / "busy"
    first = start_run(out, *STOPPABLE)
    try:
        wait_until_training(out, first)
        recorded = hydra_files(out)
        busy = run_cli(*STOPPABLE, "seed=1", f"hydra.run.dir={out}")
        assert busy.returncode == 2 and "is in use by another run" in busy.stderr
        assert hydra_files(out) == recorded
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    foreign = run_cli(*STOPPABLE, "seed=1", f"hydra.run.dir={out}")
    assert foreign.returncode == 2 and "was written by another config" in foreign.stderr
    assert hydra_files(out) == recorded


def test_a_refused_job_of_a_multirun_is_one_line_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-3000:]
    (job0,) = sweep.glob("*seed=0*")
    (job1,) = sweep.glob("*seed=1*")
    (job0 / "results.json").write_text("[1, 2]")
    (job1 / "results.json").unlink()  # job 1 trains again
    done = run_cli("-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 2
    assert "Error executing job" not in done.stderr
    line = one_line(done.stderr)
    assert line.startswith("error: job 0 (") and "seed=0," in line
    assert "does not hold a run's results" in line
    assert (job1 / "results.json").exists()


def test_online_wandb_without_a_server_is_the_one_warning(tmp_path):
    """No network here: W&B's server is a closed port on this machine (127.0.0.1:9)."""
    out = tmp_path / "run"
    done = run_with_wandb(
        tmp_path,
        "online",
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_API_KEY="0" * 40,
        WANDB_INIT_TIMEOUT="5",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert one_line(done.stderr).startswith("warning: W&B could not start (online): ")
    assert "wandb:" not in done.stdout + done.stderr
    assert (out / "results.json").is_file()


# ------------------------------------------------ nested stop signals (the job around training)


def test_a_signal_is_never_lost_between_nested_stop_signals(tmp_path):
    """Real signals to this process: the job's StopSignals around training's. A signal training
    received but did not act on passes out to the job's; one the job's received before training
    began passes in; training acts on a signal as if it were alone (not handing it outwards)."""
    with StopSignals() as job:
        with StopSignals() as training:
            os.kill(os.getpid(), signal.SIGTERM)
            assert training.received == signal.SIGTERM and job.received is None
        assert job.received == signal.SIGTERM  # handed out at the end of training
        with StopSignals() as training:
            assert training.received == signal.SIGTERM and job.received is None  # handed in
            with pytest.raises(TrainingInterrupted):
                training.stop(tmp_path / "checkpoint.pt")
        assert job.received is None
