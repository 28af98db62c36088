"""End to end: the CLI's own W&B offline runs, read back from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_offline import offline_runs, read_offline_run

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


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / "wandb_home"
    env = {
        **os.environ,
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }
    env.pop("WANDB_MODE", None)
    return subprocess.run(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_offline_run_holds_history_figures_table_and_weights(tmp_path):
    out = tmp_path / "job"
    done = run_cli(tmp_path, *TINY, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    (run_dir,) = offline_runs(out)
    run = read_offline_run(run_dir)

    assert run["state"] == "finished"
    assert run["run"]["job_type"] == "identity"
    assert run["run"]["display_name"] == "identity_5to2"
    assert run["config"]["train"]["steps"] == 40
    assert run["config"]["sweep"]["feature_probability"] == [1.0, 0.05]

    assert sorted(run["history"]) == [0, 20, 39]
    for row in run["history"].values():
        assert {"train/loss_best/p=1", "train/loss_mean/p=0.05"} <= set(row)
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


def test_multirun_jobs_share_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(tmp_path, "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    job_dirs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(job_dirs) == 2
    runs = [read_offline_run(offline_runs(job)[0])["run"] for job in job_dirs]
    assert runs[0]["run_group"] == runs[1]["run_group"] != ""
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert [r["display_name"] for r in runs] == ["0_identity_5to2", "1_identity_5to2"]


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
