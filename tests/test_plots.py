"""Every figure renders, at the size it promises, for both tasks; the plot CLI and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from safetensors.torch import save_file

from superposition.figures import __main__ as plot
from superposition.figures import run_figures as plots
from superposition.figures import style
from superposition.store.results import load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def write_run(
    out_dir: Path,
    task: str,
    n_features: int,
    d_hidden: int,
    probabilities: tuple[float, ...] = (1.0, 0.1),
    restarts: int = 3,
    hidden_relu: bool = False,
    history: bool = True,
    nan_level: int | None = None,
    feature_loss: bool = False,
) -> Path:
    """The three files of a job's output directory, with seeded random weights."""
    g = torch.Generator().manual_seed(0)
    n_levels = len(probabilities)
    importance = [0.9**i for i in range(n_features)]
    levels = []
    for level, p in enumerate(probabilities):
        losses = [0.1 * p * (1 + 0.2 * r) for r in range(restarts)]
        dead = level == nan_level
        levels.append(
            {
                "feature_probability": p,
                "importance": importance,
                "best_restart": None if dead else 0,
                "eval_loss": None if dead else losses[0],
                "restart_eval_losses": [None] * restarts if dead else losses,
                "excluded_restarts": list(range(restarts)) if dead else [],
            }
        )
        if feature_loss:
            ratio = torch.rand(n_features, generator=g).tolist()
            levels[-1]["feature_loss_ratio"] = [None] * n_features if dead else ratio
    results = {
        "task": task,
        "n_features": n_features,
        "d_hidden": d_hidden,
        "hidden_relu": hidden_relu,
        "importance": importance,
        "restarts": restarts,
        "steps": 100,
        "levels": levels,
    }
    shape = (n_levels, d_hidden, n_features)
    if task == "identity":
        weights = {"W": torch.randn(shape, generator=g)}
    else:
        weights = {
            "W1": torch.randn(shape, generator=g),
            "W2": torch.randn((n_levels, n_features, d_hidden), generator=g),
        }
    weights["b_final"] = torch.zeros(n_levels, n_features)
    if nan_level is not None:
        for value in weights.values():
            value[nan_level] = torch.nan
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results))
    save_file(weights, str(out_dir / "weights.safetensors"))
    if history:
        steps = torch.arange(0, 100, 10)
        loss = torch.rand((len(steps), n_levels, restarts), generator=g) * 0.1 + 1e-3
        if nan_level is not None:
            loss[5:, nan_level] = torch.inf
        save_file({"steps": steps, "loss": loss}, str(out_dir / "history.safetensors"))
    return out_dir


def inches(*parts: float) -> int:
    return round(sum(parts) * style.DPI)


def assert_png(path: Path, width: int, height: int) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width), path.name
    assert float(np.var(image[..., :3])) > 0, f"{path.name} is blank"


def by_name(paths: list[Path]) -> dict[str, Path]:
    return {p.stem: p for p in paths}


def test_identity_2d_draws_every_figure_at_its_size(tmp_path):
    out = write_run(tmp_path / "run", "identity", n_features=5, d_hidden=2)
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["features_2d", "wtw", "dimensionality", "loss"]  # no privileged basis
    assert all(p.parent == out / "plots" for p in paths.values())
    square = (inches(2 * plots.PANEL, plots.COLORBAR), inches(plots.PANEL, plots.HEADER))
    assert square == (600, 325)
    assert_png(paths["features_2d"], *square)
    assert_png(paths["wtw"], *square)
    assert_png(paths["dimensionality"], 800, 500)
    assert_png(paths["loss"], 1300, 475)
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        f"{name}.png" for name in paths
    )  # no temporary files left behind


def test_identity_hidden_relu_draws_neurons_and_blank_panels_for_nan_levels(tmp_path):
    out = write_run(tmp_path, "identity", n_features=6, d_hidden=3, hidden_relu=True, nan_level=0)
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["wtw", "neurons", "dimensionality", "loss"]
    assert_png(paths["neurons"], 600, inches(plots.BAR_ROW, plots.HEADER))
    assert_png(paths["wtw"], 600, 325)
    assert_png(paths["loss"], 1300, 475)


def test_abs_draws_weights_and_three_rows_of_neurons(tmp_path):
    out = write_run(tmp_path, "abs", n_features=7, d_hidden=3, probabilities=(1.0, 0.3, 0.03))
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["wtw", "neurons", "dimensionality", "loss"]
    width = inches(3 * plots.PANEL, plots.COLORBAR)
    assert_png(paths["wtw"], width, inches(2 * plots.MATRIX_ROW, plots.HEADER))
    assert_png(paths["neurons"], width, inches(3 * plots.BAR_ROW, plots.HEADER))
    assert_png(paths["dimensionality"], 800, 500)
    assert_png(paths["loss"], 1300, 475)


def test_restarts_figure_when_results_hold_the_statistics_over_restarts(tmp_path):
    out = write_run(tmp_path, "identity", 5, 2, probabilities=(1.0, 0.1, 0.01), nan_level=2)
    results = json.loads((out / "results.json").read_text())
    for level in results["levels"]:
        finite = [v for v in level["restart_eval_losses"] if v is not None]
        level["restart_stats"] = {
            "finite": len(finite),
            "loss_quantiles": None,  # the figure reads the losses themselves
            "within_1pct": 1 if finite else 0,
            "geometry": {
                "pentagon": {"restarts": len(finite) - 1, "of": len(finite), "kept": True},
                "orthogonal_pair": {"restarts": 0, "of": len(finite), "kept": False},
            },
        }
    (out / "results.json").write_text(json.dumps(results))
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["features_2d", "wtw", "dimensionality", "loss", "restarts"]
    # 1.5 in of margins + 1 in per level, at least MIN_WIDTH; the loss panel, two geometry rows
    assert_png(paths["restarts"], 600, inches(1.0, 3.0, 0.5, 2 * 0.25, 0.5))


def test_feature_loss_figure_when_results_hold_the_ratios(tmp_path):
    out = write_run(
        tmp_path, "abs", n_features=7, d_hidden=3, probabilities=(1.0, 0.3), feature_loss=True
    )
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["wtw", "neurons", "dimensionality", "feature_loss", "loss"]
    assert_png(paths["feature_loss"], 600, inches(plots.BAR_ROW, plots.HEADER))
    identity = write_run(
        tmp_path / "identity",
        "identity",
        5,
        2,
        probabilities=(1.0, 0.1, 0.01),
        nan_level=1,
        feature_loss=True,
    )
    paths = by_name(plots.draw_all(identity))
    assert_png(paths["feature_loss"], inches(3 * plots.PANEL, plots.COLORBAR), 300)


def _black_edges(fig, row: int) -> int:
    (mesh,) = [c for c in fig.axes[row].collections if isinstance(c, plots.QuadMesh)]
    edges = np.asarray(mesh.get_edgecolor())
    return int((np.abs(edges - (0, 0, 0, 1)).sum(axis=1) == 0).sum())


def test_neurons_outline_the_features_computed_for_one_sign(tmp_path):
    out = write_run(tmp_path, "abs", n_features=3, d_hidden=3, probabilities=(0.1,))
    run = load_run(out)
    # feature 0: antipodal pair (neurons 0, 1); feature 1: neuron 2 reads +x only; feature 2: none
    run.weights["W1"] = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]]])
    run.weights["W2"] = torch.tensor([[[1.0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]]])
    assert plots.one_sign_features(run, 0).tolist() == [False, True, False]
    fig = plots.neurons_figure(run)
    # axes: by interference, W1 by feature, W2ᵀ by feature (then the colorbars); feature 1 has one
    # segment in W1 (neuron 2) and one in W2ᵀ (neuron 2)
    assert [_black_edges(fig, row) for row in range(3)] == [0, 1, 1]
    assert "one sign: 1" in fig.axes[0].get_title()
    run.weights["W2"][0, 1, 1] = 1.0  # feature 1 also read by neuron 1 (-x): both signs
    run.weights["W1"][0, 1, 1] = -1.0
    assert not plots.one_sign_features(run, 0).any()
    assert [_black_edges(plots.neurons_figure(run), row) for row in range(3)] == [0, 0, 0]


def test_abs_in_2d_draws_features_of_w1(tmp_path):
    out = write_run(tmp_path, "abs", n_features=40, d_hidden=2, probabilities=(0.1,))
    paths = by_name(plots.draw_all(out))
    assert list(paths) == ["features_2d", "wtw", "neurons", "dimensionality", "loss"]
    assert_png(paths["features_2d"], 600, 325)  # one panel, widened to plots.MIN_WIDTH


def test_level_without_finite_restart_and_missing_history_still_draw(tmp_path):
    out = write_run(
        tmp_path, "abs", n_features=5, d_hidden=2, history=False, nan_level=1, restarts=1
    )
    paths = by_name(plots.draw_all(out))
    assert_png(paths["loss"], 650, 475)  # the held-out panel alone
    for name in ("features_2d", "wtw", "neurons", "dimensionality"):
        assert paths[name].stat().st_size > 0


def test_loss_figure_draws_each_reference_loss_with_a_legend(tmp_path):
    out = write_run(tmp_path, "identity", n_features=2, d_hidden=1, probabilities=(1.0, 0.1))
    results = json.loads((out / "results.json").read_text())
    for level in results["levels"]:
        level.update(loss_constant=0.2, loss_dedicated=0.0, loss_closed_form=0.05)
    results["levels"][1]["loss_closed_form"] = None
    (out / "results.json").write_text(json.dumps(results))
    fig = plots.loss_figure(load_run(out))
    ax = fig.axes[-1]
    # one short line per level and reference, centred on the level's restarts; a reference of 0
    # cannot sit on the log axis, so the dedicated one is left out
    segments = sorted(
        (round(float(np.mean(seg[:, 0])), 6), float(seg[0, 1]))
        for c in ax.collections
        if isinstance(c, LineCollection)
        for seg in c.get_segments()
    )
    assert segments == [(0.0, 0.05), (0.0, 0.2), (1.0, 0.2)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "selected (lowest held-out loss)",
        "constant: represents nothing",
        "best closed-form configuration",
    ]
    assert_png(style.save_png(fig, tmp_path / "loss.png"), 1300, 475)


def test_to_rgba_matches_the_png_size(tmp_path):
    run = load_run(write_run(tmp_path, "identity", n_features=5, d_hidden=2))
    image = style.to_rgba(plots.wtw_figure(run))
    assert image.shape == (325, 600, 4) and image.dtype == np.uint8


def test_plot_cli_reports_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert plot.main([str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(missing) in err and "results.json" in err
    assert len(err.splitlines()) == 1
    assert not missing.exists()


def test_plot_cli_reports_a_missing_results_file(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'results.json'} is missing; expected the output directory of a "
        "finished run, holding results.json and weights.safetensors"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_plot_cli_exit_status_in_a_subprocess(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "superposition.figures", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A tiny real job of the CLI: its output directory."""
    out = tmp_path_factory.mktemp("real") / "run"
    command = [
        sys.executable,
        "-m",
        "superposition.run",
        "task=identity",
        "train.steps=50",
        "train.restarts=2",
        "eval.batch_size=1024",
        "sweep.feature_probability=[1.0,0.1]",
        "wandb.mode=disabled",
        f"hydra.run.dir={out}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_plot_cli_on_a_real_run(real_run, capsys):
    assert plot.main([str(real_run)]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert [p.name for p in printed] == [
        "features_2d.png",
        "wtw.png",
        "dimensionality.png",
        "feature_loss.png",
        "loss.png",
        "restarts.png",
    ]
    assert all(p.parent == real_run / "plots" for p in printed)
    assert_png(printed[0], 600, 325)
    assert_png(printed[-2], 1300, 475)
    assert_png(printed[-1], 600, inches(1.0, 3.0, 0.5, 2 * 0.25, 0.5))


def test_metrics_of_a_real_run_are_json(real_run):
    run = load_run(real_run)
    rows = plots.metrics.level_metrics(run.task, run.weights, run.results.hidden_relu)
    assert len(rows) == 2
    json.dumps(rows, allow_nan=False)
    assert all(0 <= row["features_represented"] <= 5 for row in rows)
    assert all(
        row["mean_dimensionality"] is None or 0 < row["mean_dimensionality"] <= 1 + 1e-9
        for row in rows
    )
    assert all(math.isfinite(row["dimensions_per_feature"]) for row in rows)
