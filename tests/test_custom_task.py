"""The README's "Add your own task" example, as written there, trained through the command line:
it registers from the user's own module, trains on the autograd engine, and gets figures, results,
W&B and a bit-identical resume like a built-in task."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import REPO
from safetensors.torch import load_file
from wandb_offline import offline_runs, read_offline_run

from superposition.store.checkpoint import CHECKPOINT

ARGS = [
    "task.module=square_task",
    "task.name=square",
    "model.n_features=6",
    "model.d_hidden=3",
    "sweep.feature_probability=[1.0,0.3]",
    "train.restarts=2",
    "train.steps=300",
    "train.batch_size=128",
    "train.log_every=25",
    "train.checkpoint_every=25",
    "train.lr=0.01",
    "eval.batch_size=16384",
]


def readme_example() -> str:
    """The first Python block of the README's "Add your own task" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Add your own task") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def cli(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(job: subprocess.Popen) -> str:
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    return out


def independent_loss(weights: dict, level: int, p: float, importance: list[float]) -> tuple:
    """The kept model's loss at level `level`, from the README's own formula on fresh rows
    (torch's generator, not the runner's): mean and standard error."""
    generator = torch.Generator().manual_seed(123)
    rows, f = 200_000, weights["W1"].shape[-1]
    active = torch.rand(rows, f, generator=generator) < p
    x = torch.where(active, 2 * torch.rand(rows, f, generator=generator) - 1, 0.0)
    hidden = torch.relu(x @ weights["W1"][level].T)
    out = torch.relu(hidden @ weights["W2"][level].T + weights["b_final"][level])
    per_row = (torch.tensor(importance) * (x.square() - out) ** 2).mean(dim=1).double()
    return float(per_row.mean()), float(per_row.std() / rows**0.5)


def test_the_readme_example_trains_like_a_built_in_task(tmp_path):
    (tmp_path / "square_task.py").write_text(readme_example())
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"

    job = cli(tmp_path, *ARGS, f"hydra.run.dir={interrupted}")
    deadline = time.monotonic() + 120
    while not (interrupted / CHECKPOINT).exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM, err
    resumed = finish(cli(tmp_path, *ARGS, f"hydra.run.dir={interrupted}"))
    assert f"resuming from {interrupted / CHECKPOINT}" in resumed
    finish(cli(tmp_path, *ARGS, f"hydra.run.dir={whole}"))
    a, b = (load_file(str(d / "weights.safetensors")) for d in (interrupted, whole))
    assert sorted(a) == ["W1", "W2", "b_final"]
    assert all(torch.equal(a[name], b[name]) for name in b)

    results = json.loads((whole / "results.json").read_text())
    assert (results["task"], results["engine"]) == ("square", "autograd")
    assert Path(results["task_module"]) == tmp_path / "square_task.py"
    for level, row in enumerate(results["levels"]):
        p = row["feature_probability"]
        loss, error = independent_loss(b, level, p, row["importance"])
        assert abs(row["eval_loss"] - loss) < 5 * error + 0.02 * loss, (p, row["eval_loss"], loss)
        constant = sum(row["importance"]) / 6 * (p / 5 - (p / 3) ** 2)  # output E[x²] = p / 3
        assert row["eval_loss"] < 0.9 * constant  # it learned some of x²
        assert row["metrics"]["monosemantic_fraction"] is not None

    figures = sorted(path.name for path in (whole / "plots").glob("*.png"))
    expected = ["dimensionality", "feature_loss", "loss", "neurons", "restarts", "wtw"]
    assert figures == [f"{name}.png" for name in expected]
    (run_dir,) = offline_runs(whole)
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "square"
    assert run["history"] and run["artifacts"]

    # the figures redraw from anywhere: results.json says where the task comes from
    redraw = subprocess.run(
        [sys.executable, "-m", "superposition.figures", str(whole)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert redraw.returncode == 0, redraw.stderr
    assert len(redraw.stdout.splitlines()) == len(figures)
