"""scripts/gpu_check.py as CI can run it: the dry run does every step on the CPU at tiny sizes and
writes their figures into one JSON file; bad input ends in one line of error."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"
STEPS = ["install", "gpu_tests", "bench", "paper_run"]


def gpu_check(*args: str, python_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_options, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "x.json"
    return gpu_check("--dry-run", "--out", str(out)), out


@pytest.fixture(scope="module")
def report(dry_run) -> dict:
    done, out = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_the_dry_run_does_every_step_and_says_so_line_by_line(dry_run, report):
    done, out = dry_run
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == STEPS
    assert all(line.split()[-1] == "ok" for line in lines[:-1]), lines
    assert lines[-1] == f"figures in {out}"
    assert report["check"] == "dry_run" and report["ok"] is True
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step)
        assert 0 < step["seconds"] <= step["limit_s"]
    assert report["total_seconds"] >= sum(step["seconds"] for step in report["steps"].values())
    assert {log.name for log in out.with_name("x.json.logs").iterdir()} == {
        "gpu_tests.log",
        "bench.log",
        "paper_run.log",
    }


def test_the_environment_is_recorded_and_nothing_installed_where_the_packages_import(report):
    environment = report["environment"]
    assert environment["python"] == platform.python_version()
    assert environment["torch"] == torch.__version__
    assert environment["cuda_available"] == torch.cuda.is_available()
    assert environment["packages"]["hydra-core"] and environment["packages"]["wandb"]
    install = report["steps"]["install"]
    assert install["installed"] == "nothing: the packages import already"
    assert set(install["imports"].values()) == {"ok"}
    assert "superposition.run" in install["imports"]


def test_the_gpu_tests_are_run_and_skip_without_a_gpu(report):
    tests = report["steps"]["gpu_tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["deselected"] > 0
    if torch.cuda.is_available():
        assert tests["passed"] >= 20 and tests["skipped"] == 0
    else:
        assert tests["skipped"] >= 20 and tests["passed"] == 0
    assert "skipped" in tests["summary"]


def test_the_bench_and_the_paper_run_leave_their_figures(report):
    bench = report["steps"]["bench"]
    assert bench["figures"]["device"] == "cpu"
    assert bench["speedups"] and all(speedup > 0 for speedup in bench["speedups"].values())
    run = report["steps"]["paper_run"]
    results = run["results"]
    assert (results["preset"], results["device"], results["restarts"], results["steps"]) == (
        "neuron_computation",
        "cpu",
        1,
        20,
    )
    assert len(results["levels"]) == 7
    for level in results["levels"]:
        assert math.isfinite(level["eval_loss"]) and level["eval_loss"] > 0
    assert results["train_seconds"] > 0 and run["wall_s"] > results["train_seconds"]
    assert results["verdict"] in ("PASS", "FAIL")
    assert run["report_verdict"] == results["verdict"]


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_wheels_needed_but_not_there_is_one_line_of_error(tmp_path, folder):
    """python -S -E: an interpreter without site-packages, so the packages are missing and must
    come from --wheels."""
    wheels = tmp_path / "wheels"
    if folder == "empty":
        wheels.mkdir()
    out = tmp_path / "x.json"
    done = gpu_check("--wheels", str(wheels), "--out", str(out), python_options=("-S", "-E"))
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    what = "no such folder" if folder == "missing" else "no wheels in it"
    assert line.startswith(f"error: --wheels {wheels}: {what}; hydra, omegaconf")
    assert line.endswith(f"python scripts/gpu_check.py --fetch-wheels {wheels})")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")
def test_the_gpu_check_without_a_gpu_is_one_line_of_error(tmp_path):
    done = gpu_check("--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line == (
        f"error: torch {torch.__version__} sees no CUDA GPU here; --dry-run checks the script on "
        "the CPU"
    )
