"""The paper presets (conf/preset/): each composes, validates and runs end to end at a tiny
size, ending with a verdict in report.md, results.json and W&B. Their full-size runs, whose
verdicts must pass, are documented commands in the README, not tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from wandb_offline import offline_runs, read_offline_run

from superposition.analysis.verdicts import PRESETS, REPORT
from superposition.job import run_job
from superposition.run import to_config
from superposition.store.files import read_tensors

PRESET_FILES = sorted(path.stem for path in (CONF_DIR / "preset").glob("*.yaml"))
# X_paper: preset X at the paper's size (same verdict), a documented command, not a tiny run here
PAPER_SIZE = "_paper"
EXPERIMENTS = [name for name in PRESET_FILES if not name.endswith(PAPER_SIZE)]
TINY = [
    "train.steps=30",
    "train.restarts=2",
    "train.batch_size=128",
    "train.log_every=10",
    "eval.batch_size=1024",
    "wandb.mode=disabled",
]
# sizes that keep the larger presets fast; the grid's shape (levels, pairs) is kept
SMALLER = {
    "dimensionality": [
        "model.n_features=20",
        "model.d_hidden=4",
        "sweep.feature_probability=[1.0,0.2,0.05]",
    ],
    "neuron_computation": ["model.n_features=20", "model.d_hidden=8"],
    "phase_diagram": ["sweep.relative_importance=[0.3,3.0]", "sweep.feature_probability=[1.0,0.1]"],
}


def test_every_preset_has_an_experiment_file_and_back():
    assert EXPERIMENTS == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESET_FILES)
def test_preset_composes_and_names_its_verdict(compose_config, name):
    config = to_config(compose_config(f"preset={name}"))
    assert config.preset == name.removesuffix(PAPER_SIZE)
    text = (CONF_DIR / "preset" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")


def test_paper_size_presets_have_the_papers_sizes(compose_config):
    """The base preset with only the sizes changed: 1 000 restarts of the pentagon, 400 -> 30 at
    20+ levels down to p = 0.01, 64 restarts of abs 100 -> 40."""
    for name in ("intro_pentagon", "dimensionality", "neuron_computation"):
        base = to_config(compose_config(f"preset={name}"))
        paper = to_config(compose_config(f"preset={name}{PAPER_SIZE}"))
        assert (paper.task, paper.importance, paper.seed) == (base.task, base.importance, base.seed)
    pentagon = to_config(compose_config("preset=intro_pentagon_paper"))
    assert pentagon.train.restarts == 1000
    dims = to_config(compose_config("preset=dimensionality_paper"))
    assert (dims.model.n_features, dims.model.d_hidden) == (400, 30)
    p = dims.sweep.feature_probability
    assert len(p) >= 20 and p[0] == 1.0 and min(p) == pytest.approx(0.01) and p == sorted(p)[::-1]
    neurons = to_config(compose_config("preset=neuron_computation_paper"))
    assert (neurons.model.n_features, neurons.model.d_hidden) == (100, 40)
    assert neurons.train.restarts >= 64


def test_phase_preset_is_a_grid_of_relative_importance_by_probability(compose_config):
    config = to_config(compose_config("preset=phase_diagram"))
    assert (config.model.n_features, config.model.d_hidden) == (2, 1)
    r, p = config.sweep.relative_importance, config.sweep.feature_probability
    assert min(r) == pytest.approx(0.1) and max(r) == pytest.approx(10.0)
    assert min(p) == pytest.approx(0.01) and max(p) == pytest.approx(1.0)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_run_of_each_preset_ends_with_a_verdict(compose_config, tmp_path, name, capsys):
    config = to_config(compose_config(f"preset={name}", *TINY, *SMALLER.get(name, [])))
    results = run_job(config, tmp_path, run_name=name)
    report = (tmp_path / REPORT).read_text()
    assert report.splitlines()[-1] in ("verdict: PASS", "verdict: FAIL")
    assert results.verdict == report.splitlines()[-1].removeprefix("verdict: ")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["preset"] == name and saved["verdict"] == results.verdict
    assert "verdict:" in capsys.readouterr().out
    weights = read_tensors(tmp_path / "weights.safetensors")
    n_levels = len(saved["levels"])
    assert all(t.shape[0] == n_levels for t in weights.values())
    for level in saved["levels"]:
        assert len(level["importance"]) == config.model.n_features
    if name == "phase_diagram":
        r_values, p_values = saved["relative_importance"], saved["feature_probability"]
        assert n_levels == len(r_values) * len(p_values)
        for index, level in enumerate(saved["levels"]):
            r = r_values[index // len(p_values)]
            assert level["relative_importance"] == r
            assert level["feature_probability"] == p_values[index % len(p_values)]
            assert level["importance"][-1] == pytest.approx(r * level["importance"][0])
        assert (tmp_path / "plots" / "phase_diagram.png").stat().st_size > 10_000
    if name in ("correlated", "anticorrelated"):
        assert sum(saved["data"].values()) == 2


def test_a_preset_verdict_reaches_wandb(tmp_path):
    """Through the CLI with W&B offline: the summary holds the verdict and its checks, and the
    report is a logged panel."""
    from test_tracking_e2e import run_cli

    out = tmp_path / "run"
    done = run_cli(
        tmp_path,
        "preset=correlated",
        *[arg for arg in TINY if not arg.startswith("wandb.")],
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    assert "verdict:" in done.stdout
    (run_dir,) = offline_runs(out)
    run = read_offline_run(run_dir)
    assert run["summary"]["verdict"] in ("PASS", "FAIL")
    assert any(key.startswith("verdict/") for key in run["summary"])
    assert any(key.startswith("report.") for row in run["history"].values() for key in row)
    (panel,) = [f for f in run["files"] if f.startswith("media/html/report")]
    text = (run_dir / "files" / panel).read_text()
    assert (out / "report.md").read_text().splitlines()[-1] in text
    assert run["summary"]["verdict"] == json.loads((out / "results.json").read_text())["verdict"]


def test_phase_sweep_grid_importance_vectors():
    from superposition.grid import phase_sweep_grid

    grid = phase_sweep_grid([0.5, 2.0], [1.0, 0.1, 0.01], n_features=3, decay=1.0, restarts=2)
    assert grid.n_levels == 6 and grid.n_instances == 12
    assert torch.equal(
        grid.feature_probability, torch.tensor([1.0, 0.1, 0.01] * 2, dtype=torch.float64)
    )
    assert (
        grid.importance[:3, -1].tolist() == [0.5] * 3
        and grid.importance[3:, -1].tolist() == [2.0] * 3
    )
    assert (grid.importance[:, :2] == 1).all()


def test_unknown_preset_is_one_line(tmp_path):
    from conftest import run_cli

    done = run_cli("preset=nope", f"hydra.run.dir={tmp_path / 'x'}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: preset=nope is not a known choice; allowed: " + ", ".join(PRESET_FILES)
    ]
    assert not (tmp_path / "x").exists()
    assert Path(CONF_DIR / "preset").is_dir()


@pytest.mark.parametrize(
    "overrides, missing",
    [
        (["preset=correlated", "data.correlated_pairs=0"], "data.correlated_pairs >= 1"),
        (["preset=phase_diagram", "sweep.relative_importance=[]"], "sweep.relative_importance"),
        (["preset=anticorrelated", "data.anticorrelated_pairs=0"], "anticorrelated_pairs"),
    ],
)
def test_a_preset_refuses_a_run_it_cannot_judge(compose_config, overrides, missing):
    from superposition.config import ConfigError

    with pytest.raises(ConfigError, match=missing):
        to_config(compose_config(*overrides))
