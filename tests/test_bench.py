"""scripts/bench.py: both sides learn, the reference samples the right data, the CLI writes JSON.

No timing is asserted: the figures of a benchmark are reported, not tested.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from superposition.engine.cpus import cpu_allocation
from superposition.tasks.model import ModelSpec, forward

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench", None)


def tiny_settings(bench, steps: int):
    args = bench.parse_args(["--tiny", "--steps", str(steps), "--repeats", "1"])
    return replace(bench.make_settings(args, torch.device("cpu")), batch_size=256)


@pytest.mark.parametrize("name", ["W1", "W2"])
def test_reference_loop_learns(bench, name):
    workload = replace(next(w for w in bench.WORKLOADS if w.name == name), restarts=1)
    model = bench.run_reference(workload, 100, 256, 1e-2, seed=0, device=torch.device("cpu"))
    # loss read every 50 steps and at the last one: steps 0, 50, 99
    assert len(model.loss_log) == 3
    assert model.loss_log[-1] < 0.7 * model.loss_log[0]
    shapes = workload.spec.param_shapes()
    params = model.trained_params()
    assert {k: tuple(v.shape[1:]) for k, v in params.items()} == shapes


@pytest.mark.parametrize("name", ["W1", "W2"])
def test_project_trainer_learns(bench, name):
    workload = replace(next(w for w in bench.WORKLOADS if w.name == name), restarts=1)
    result = bench.run_project(workload, 100, 256, 1e-2, seed=0, device=torch.device("cpu"))
    first, last = result.loss_history[0].mean(), result.loss_history[-1].mean()
    assert last < 0.7 * first


@pytest.mark.parametrize("name", ["W1", "W2"])
def test_both_sides_score_on_the_same_held_out_batch(bench, name):
    workload = replace(next(w for w in bench.WORKLOADS if w.name == name), restarts=2)
    settings = tiny_settings(bench, 20)
    scores = []
    for side in bench.SIDES:
        params, _ = bench.run_side(side, workload, 20, settings, seed=0)
        assert params.keys() == workload.spec.param_shapes().keys()
        scores.append(bench.held_out_loss(workload, params, settings))
        assert scores[-1] == bench.held_out_loss(workload, params, settings)
        assert scores[-1]["best_of_restarts_mean"] <= scores[-1]["mean"]
    assert scores[0] != scores[1]


@pytest.mark.parametrize("task", ["identity", "abs"])
def test_reference_sampler_marginals(bench, task):
    torch.manual_seed(0)
    probability = torch.tensor([1.0, 0.3, 0.05])
    spec = ModelSpec(task=task, n_features=8, d_hidden=2)
    model = bench.ReferenceToyModel(spec, probability, torch.ones(3, 8), device=torch.device("cpu"))
    rows = 20_000
    batch = model.generate_batch(rows)  # (batch, instance, feature)
    assert batch.shape == (rows, 3, 8)
    active = batch != 0
    frequency = active.float().mean(dim=(0, 2))
    n = rows * 8
    tolerance = 5 * torch.sqrt(probability * (1 - probability) / n) + 1e-6
    assert torch.all((frequency - probability).abs() <= tolerance), frequency
    magnitudes = batch[active]
    if task == "identity":
        assert magnitudes.min() >= 0 and magnitudes.max() < 1
        assert abs(magnitudes.mean().item() - 0.5) < 0.01
    else:
        assert magnitudes.min() >= -1 and magnitudes.max() < 1
        assert abs(magnitudes.mean().item()) < 0.01
        assert abs(magnitudes.abs().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize(
    "task, hidden_relu", [("identity", False), ("identity", True), ("abs", False)]
)
def test_reference_forward_is_the_package_model(bench, task, hidden_relu):
    torch.manual_seed(0)
    spec = ModelSpec(task=task, n_features=6, d_hidden=3, hidden_relu=hidden_relu)
    model = bench.ReferenceToyModel(
        spec, torch.full((2,), 0.5), torch.ones(2, 6), device=torch.device("cpu")
    )
    with torch.no_grad():
        model.b_final.normal_()
    x = model.generate_batch(32)  # (batch, instance, feature)
    expected = forward(spec, model.trained_params(), x.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(model(x).detach(), expected)


def test_flop_count_of_w1(bench):
    w1 = bench.WORKLOADS[0]
    assert w1.n_instances == 448
    # forward + backward (3x) x multiply-add (2x) x rows x instances x (x->hidden + hidden->out)
    assert w1.flops_per_step(1024) == 3 * 2 * 1024 * 448 * (5 * 2 + 2 * 5)
    assert math.isclose(bench.WORKLOADS[2].flops_per_step(1), 6 * 16 * 2 * 200 * 20)


def test_cli_smoke_run_writes_json(tmp_path):
    """One workload only, to keep the test fast; the memory section always runs (on W1)."""
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--quick", "--tiny", "--steps", "5", "--repeats", "1", "--only", "W1"]
    args += ["--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verdicts (issue 5)" in proc.stdout
    report = json.loads(out.read_text())
    assert {"device", "settings", "matmul_peak", "workloads", "memory", "verdicts"} <= set(report)
    assert report["settings"]["steps"] == 5 and report["settings"]["repeats"] == 1
    assert report["matmul_peak"]["gflops"] > 0
    assert set(report["workloads"]) == {"W1"}
    for workload in report["workloads"].values():
        assert {"speedup", "loss_ratio", "target_speedup", "target_met"} <= set(workload)
        for side in ("reference", "project"):
            figures = workload[side]
            for key in ("instance_steps_per_s", "gflops", "peak_memory_mb", "eval_loss"):
                assert math.isfinite(figures[key]), (side, key)
            assert len(figures["seconds"]) == 1
    rows = report["memory"]["rows"]
    assert [row["n_instances"] for row in rows] == [14, 140, 140]
    assert rows[1]["chunk_size"] < 140 and rows[2]["chunk_size"] == 140
    assert len(report["verdicts"]) == 1 and report["verdicts"][0].startswith("W1: ")


def test_contention_mode_times_both_sides_beside_real_neighbour_processes(tmp_path):
    """--contention with k = 0 and 1 CPU-bound neighbours (real processes); the figures are
    timings, so the test checks their shape and the fractions' arithmetic, not their values."""
    out = tmp_path / "contention.json"
    args = ["--contention", "--tiny", "--steps", "3", "--repeats", "1", "--only", "W1,W3"]
    args += ["--neighbours", "0,1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Under load (")
    report = json.loads(out.read_text())["contention"]
    assert report["loads"] == [0, 1] and report["cpus"] == cpu_allocation(pin=False).cpus
    for name in ("W1", "W3"):
        quiet, loaded = (report[name]["by_load"][k] for k in ("0", "1"))
        assert quiet["project_of_quiet"] == quiet["reference_of_quiet"] == 1.0
        assert loaded["fair_share"] == 0.5
        assert loaded["project_of_quiet"] == loaded["project"] / quiet["project"]
        assert loaded["trainer_threads"] >= 1
        assert f"| {name} | 1 |" in proc.stdout
        assert len(loaded["neighbour_pids"]) == 1 and quiet["neighbour_pids"] == []
    # no neighbour outlives the benchmark
    for name in ("W1", "W3"):
        for pid in report[name]["by_load"]["1"]["neighbour_pids"]:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_contention_mode_refuses_a_load_list_without_the_quiet_baseline():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--contention", "--neighbours", "1,3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--neighbours must start with 0 and hold no negative k, got 1,3" in proc.stderr
