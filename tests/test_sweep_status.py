"""A multirun as one unit, without a scheduler: its manifest, `python -m superposition.sweep
status`, and a second submission that launches only the jobs whose config has not finished.
Real in-process multiruns in subprocesses (tests/test_slurm.py does the same on SLURM)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time

from conftest import REPO, run_cli

from superposition.sweep.__main__ import main
from superposition.sweep.status import last_error_line

TINY = [
    "task=identity",
    "model.n_features=6",
    "train.steps=30",
    "train.restarts=2",
    "eval.batch_size=1024",
    "sweep.feature_probability=[1.0,0.1]",
    "wandb.mode=disabled",
]


def sweep_status(sweep) -> dict:
    """`python -m superposition.sweep status SWEEP --json`, called in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", str(sweep), "--json"]) == 0
    return json.loads(out.getvalue())


def states(status: dict) -> dict[str, str]:
    return {job["label"]: job["state"] for job in status["jobs"]}


def test_status_and_a_grown_sweep_that_trains_only_its_new_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", *TINY, "model.d_hidden=2,0,3", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 2  # the refused job fails the command, after the others ran
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [job["num"] for job in manifest["jobs"]] == [0, 1, 2]
    assert manifest["submissions"][0]["launcher"] == "in-process"

    status = sweep_status(sweep)
    assert states(status) == {
        "model.d_hidden=2": "finished",
        "model.d_hidden=0": "failed",
        "model.d_hidden=3": "finished",
    }
    by_label = {job["label"]: job for job in status["jobs"]}
    assert by_label["model.d_hidden=0"]["detail"] == "error: model.d_hidden must be >= 1, got 0"
    assert by_label["model.d_hidden=2"]["detail"].startswith("loss p=1: ")
    assert status["total"] == "3 jobs: 2 finished, 1 failed"

    # the same sweep, its list grown and reordered, and the default seed=0 written out (other
    # directory names, the same configs): only d_hidden=4 (and the refused 0) run
    finished = {
        job["dir"]: (sweep / job["dir"] / "results.json").read_bytes()
        for job in status["jobs"]
        if job["state"] == "finished"
    }
    again = run_cli("-m", *TINY, "model.d_hidden=4,3,0,2", "seed=0", f"hydra.sweep.dir={sweep}")
    assert "2 of 4 jobs already finished in" in again.stdout
    assert again.stdout.count("results written to") == 1
    assert "already finished, not trained" not in again.stdout
    for directory, content in finished.items():
        assert (sweep / directory / "results.json").read_bytes() == content
    status = sweep_status(sweep)
    assert states(status)["model.d_hidden=4 seed=0"] == "finished"
    assert status["total"] == "5 jobs: 3 finished, 2 failed"
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert len(manifest["submissions"]) == 2
    assert {job["dir"] for job in manifest["jobs"]} == {job["dir"] for job in status["jobs"]}

    # a manifest that cannot be read stops the next submission before any job, in one line
    (sweep / "manifest.json").write_text("{")
    broken = run_cli("-m", *TINY, "model.d_hidden=5", f"hydra.sweep.dir={sweep}")
    assert broken.returncode == 2 and "results written" not in broken.stdout
    (line,) = broken.stderr.splitlines()
    assert line.startswith(f"error: {sweep / 'manifest.json'} cannot be read (JSONDecodeError)")


def test_the_error_line_of_a_log():
    bar = "train 4 instances:  1%|▏   | 32/3000 [00:01<02:52, 17.23step/s, loss=0.1]"
    assert last_error_line(f"{bar}\rerror: train.steps must be >= 1\n") == (
        "error: train.steps must be >= 1"
    )
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nAssertionError\n'
    assert last_error_line(traceback) == "AssertionError"
    killed = f"{bar}\r{bar}srun: error: vm: task 0: Killed\n"
    assert last_error_line(killed) == "srun: error: vm: task 0: Killed"
    assert last_error_line("") is None


def test_status_refuses_what_is_not_a_sweep(tmp_path, capsys):
    for target, message in [
        (tmp_path / "missing", "is not a directory"),
        (tmp_path, "is not a sweep directory"),
    ]:
        assert main(["status", str(target)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        (line,) = err.splitlines()
        assert line.startswith("error: ") and message in line


def test_a_killed_sweep_shows_what_stopped_and_resumes_it(tmp_path):
    """SIGKILL to an in-process multirun in its first job: status says the first job stopped at
    its step and the second never started; the same command resumes the first from its
    checkpoint and trains the second."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *TINY,
        "train.steps=1500",
        "train.checkpoint_every=20",
        "model.d_hidden=2,3",
        f"hydra.sweep.dir={sweep}",
    ]
    command = [sys.executable, "-m", "superposition.run", *args]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as proc:
        try:
            deadline = time.monotonic() + 120
            while not list(sweep.glob("*/checkpoint.pt")):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.kill()
    status = sweep_status(sweep)
    assert states(status) == {"model.d_hidden=2": "stopped", "model.d_hidden=3": "not started"}
    stopped = status["jobs"][0]["detail"]
    assert re.match(r"ended at step \d+/1500 without a word \(killed\?\); run the sweep", stopped)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("resuming from") == 1
    assert sweep_status(sweep)["total"] == "2 jobs: 2 finished"
