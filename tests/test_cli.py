"""End-to-end runs of `python -m superposition.run` and its answers to bad input."""

import json
import math
import re
import sys

import pytest
from conftest import run_cli
from safetensors.torch import load_file

import superposition.run as run_module

TINY = ["train.steps=40", "train.restarts=3", "eval.batch_size=2048", "wandb.mode=disabled"]


@pytest.mark.parametrize(
    "task, extra, weight_shapes",
    [
        (
            "identity",
            [],
            {"W": (3, 2, 5), "b_final": (3, 5)},
        ),
        (
            "abs",
            ["model.n_features=12", "model.d_hidden=4"],
            {"W1": (3, 4, 12), "W2": (3, 12, 4), "b_final": (3, 12)},
        ),
    ],
)
def test_run_writes_the_output_contract(tmp_path, task, extra, weight_shapes):
    out = tmp_path / "run"
    grid = [1.0, 0.1, 0.01]
    done = run_cli(
        f"task={task}",
        "sweep=sparsity",
        f"sweep.feature_probability=[{','.join(map(str, grid))}]",
        *TINY,
        *extra,
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    assert f"results written to {out}" in done.stdout

    results = json.loads((out / "results.json").read_text())
    n_features = weight_shapes["b_final"][1]
    assert results["task"] == task
    assert results["n_features"] == n_features
    assert results["d_hidden"] == next(iter(weight_shapes.values()))[1]
    decay = 0.9 if task == "identity" else 0.8
    assert results["importance"] == pytest.approx([decay**i for i in range(n_features)])
    assert [level["feature_probability"] for level in results["levels"]] == grid
    for level in results["levels"]:
        losses = level["restart_eval_losses"]
        assert len(losses) == 3
        assert level["best_restart"] == min(range(3), key=losses.__getitem__)
        # the kept restart is reported on fresh rows: not its ranking loss, but within its errors
        best = level["best_restart"]
        se, best_se = level["eval_loss_se"], level["restart_eval_loss_se"][best]
        assert level["eval_loss"] != losses[best] and se > 0
        assert abs(level["eval_loss"] - losses[best]) < 5 * math.hypot(se, best_se)
        assert best in level["near_best_restarts"]
    assert results["eval_method"] == "stratified"
    assert results["train_seconds"] > 0 and results["instance_steps_per_s"] > 0

    weights = load_file(str(out / "weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == weight_shapes
    history = load_file(str(out / "history.safetensors"))
    assert history["loss"].shape == (len(history["steps"]), 3, 3)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_same_seed_reproduces_the_weights(tmp_path):
    args = ["task=identity", "sweep.feature_probability=[0.3]", *TINY]
    first = run_cli(*args, f"hydra.run.dir={tmp_path / 'a'}")
    # cluster= is for multiruns: a single run says so and stays in this process, same result
    second = run_cli(*args, "cluster=local", f"hydra.run.dir={tmp_path / 'b'}")
    assert first.returncode == 0 and second.returncode == 0
    assert "warning: cluster= applies to multiruns (-m)" in second.stderr
    a = load_file(str(tmp_path / "a" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "weights.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("task=foo", "task=foo is not a known choice; allowed: abs, identity"),
        ("sweep=bar", "sweep=bar is not a known choice; allowed:"),
        (
            "sweep.feature_probability=[0.5,0]",
            "sweep.feature_probability must hold numbers in [1.2e-38, 1]",
        ),
        (
            "sweep.feature_probability=[1.2]",
            "sweep.feature_probability must hold numbers in [1.2e-38, 1]",
        ),
        ("sweep.feature_probability=[]", "sweep.feature_probability is empty"),
        ("model.d_hidden=0", "model.d_hidden must be >= 1"),
        ("model.n_features=0", "model.n_features must be >= 1"),
        ("train.restarts=0", "train.restarts must be >= 1"),
        ("train.steps=0", "train.steps must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("importance.decay=0", "importance.decay must be a finite number > 0"),
        (
            "train.optimizer=sgd",
            "train.optimizer: Invalid value 'sgd', expected one of [adam, adamw]",
        ),
        ("train.lr_schedule=step", "train.lr_schedule: Invalid value 'step'"),
        ("model.n_features=five", "model.n_features: Value 'five'"),
        ("model.width=3", "model.width: Key 'width' not in 'ModelConfig'"),
        ("device=cuda", "device=cuda but no CUDA GPU is visible to torch; allowed: auto, cpu"),
    ],
)
def test_bad_input_gets_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, capsys, override, expected
):
    """The real entry point in this process (a subprocess per case would cost seconds each)."""
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["superposition.run", override, f"hydra.run.dir={out}"])
    with pytest.raises(SystemExit) as exit_info:
        run_module.main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()


def test_bad_input_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    done = run_cli("task=identity", "train.restarts=0", f"hydra.run.dir={out}")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: train.restarts must be >= 1, got 0"
    assert not out.exists()


def test_the_default_output_directory_is_named_after_the_task(tmp_path):
    """Without hydra.run.dir: outputs/DATE/TIME_TASK under the current directory."""
    done = run_cli("task=identity", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert re.fullmatch(r"\d\d-\d\d-\d\d_identity", run_dir.name), run_dir.name
    assert (run_dir / "results.json").is_file()
