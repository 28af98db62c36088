"""Read an offline W&B run back from disk, with wandb's own reader of the .wandb log
(`wandb leet inspect --json`, in wandb >= 0.31), for tests that check what a job tracked; and
keep the tests' W&B files out of the user's home (quiet_wandb_env)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def quiet_wandb_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Keep wandb's settings, cache and artifact staging out of the user's home directory."""
    for var, sub in [
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ]:
        mp.setenv(var, str(home / sub))
    mp.delenv("WANDB_MODE", raising=False)


def leet_inspect(run_dir: Path, *flags: str) -> str:
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def offline_runs(out_dir: Path) -> list[Path]:
    """The offline run directories under a job's output directory, oldest first."""
    return sorted((Path(out_dir) / "wandb").glob("offline-run-*"))


def read_offline_run(run_dir: Path) -> dict:
    """What the run's .wandb log holds.

    run: the run record (run_id, display_name, run_group, job_type, project, resume, ...);
    config, summary, state ('finished', 'failed', ...), exit_code: the final state;
    history: {step: {key: value}}, rows of the same (W&B) step merged;
    train: {train/step: {key: value}}, the history rows that carry a train/step, merged by it
    (the rows of a chunked run's levels come at several W&B steps);
    artifacts: [{name, type, metadata, files: {path: {size, digest, local_path}}}];
    files: paths (relative to run_dir/files) that the run saved.
    """
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in leet_inspect(run_dir).splitlines() if line.strip()]
    final = json.loads(leet_inspect(run_dir, "--summary"))
    run, history, artifacts, files = {}, {}, [], []
    for record in records:
        kind = record["type"]
        if kind == "run":
            run = record["run"]
        elif kind == "history":
            step = int(record["history"]["step"]["num"])
            history.setdefault(step, {}).update(record["history"]["item"])
        elif kind == "artifact":
            artifact = record["artifact"]
            metadata = artifact.get("metadata") or "{}"
            artifacts.append(
                {
                    "name": artifact["name"],
                    "type": artifact["type"],
                    "metadata": json.loads(metadata) if isinstance(metadata, str) else metadata,
                    "files": {
                        entry["path"]: {
                            "size": int(entry["size"]),
                            "digest": entry["digest"],
                            "local_path": entry.get("local_path"),
                        }
                        for entry in artifact["manifest"]["contents"]
                    },
                }
            )
        elif kind == "files":
            files += [f["path"] for f in record["files"]["files"]]
    train = {}
    for row in history.values():
        if "train/step" in row:
            keys = [key for key in row if key.startswith("train/")]
            train.setdefault(int(row["train/step"]), {}).update({key: row[key] for key in keys})
    return {
        "run": run,
        "config": final.get("config", {}),
        "summary": final.get("summary", {}),
        "state": final.get("state"),
        "exit_code": final.get("exit_code"),
        "history": history,
        "train": train,
        "artifacts": artifacts,
        "files": files,
    }
