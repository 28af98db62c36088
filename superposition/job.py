"""One job of the data flow: grid → train → evaluate → select → write. Knows no Hydra."""

from __future__ import annotations

from pathlib import Path

import torch

from superposition.config import Config
from superposition.device import resolve_device
from superposition.evaluate import evaluate_grid
from superposition.grid import InstanceGrid, sparsity_grid
from superposition.model import ModelSpec
from superposition.outputs import HISTORY, RESULTS, WEIGHTS, write_json, write_tensors
from superposition.select import Selection, gather_best, select_best
from superposition.train import TrainResult, train_grid


def model_spec(config: Config) -> ModelSpec:
    return ModelSpec(
        task=config.task,
        n_features=config.model.n_features,
        d_hidden=config.model.d_hidden,
        hidden_relu=config.model.hidden_relu,
    )


def build_grid(config: Config) -> InstanceGrid:
    return sparsity_grid(
        config.sweep.feature_probability,
        config.model.n_features,
        config.importance.decay,
        config.train.restarts,
    )


def results_summary(
    config: Config,
    grid: InstanceGrid,
    trained: TrainResult,
    selection: Selection,
    device: torch.device,
) -> dict:
    levels = []
    for level in range(grid.n_levels):
        frozen = [r for lv, r in selection.excluded if lv == level]
        levels.append(
            {
                "feature_probability": float(grid.feature_probability[level]),
                "importance": grid.importance[level].tolist(),
                "best_restart": selection.best_restart[level],
                "eval_loss": selection.best_loss[level],
                "restart_eval_losses": selection.eval_loss[level].tolist(),
                "excluded_restarts": frozen,
            }
        )
    return {
        "task": config.task.value,
        "n_features": config.model.n_features,
        "d_hidden": config.model.d_hidden,
        "hidden_relu": config.model.hidden_relu,
        "importance": grid.importance[0].tolist(),
        "restarts": grid.restarts,
        "steps": config.train.steps,
        "seed": config.seed,
        "device": str(device),
        "eval_batch_size": config.eval.batch_size,
        "chunk_size": trained.chunk_size,
        "levels": levels,
        "excluded": [{"level": lv, "restart": r} for lv, r in selection.excluded],
        "train_seconds": trained.seconds,
        "instance_steps_per_s": trained.instance_steps_per_s,
    }


def run_job(config: Config, out_dir: Path) -> dict:
    """Train, select and write the outputs of one job; return what results.json holds."""
    device = resolve_device(config.device)
    spec = model_spec(config)
    grid = build_grid(config)
    trained = train_grid(spec, grid, config.train, config.seed, device)
    eval_loss = evaluate_grid(
        spec, trained.params, grid, config.seed, config.eval.batch_size, device
    )
    selection = select_best(eval_loss, trained.finite, grid.restarts)
    for level, restart in selection.excluded:
        print(
            f"warning: level {level} (p={float(grid.feature_probability[level]):g}) restart "
            f"{restart}: loss turned non-finite; frozen and excluded from selection"
        )
    out_dir = Path(out_dir)
    write_tensors(out_dir / WEIGHTS, gather_best(trained.params, selection, grid.restarts))
    history = trained.loss_history.view(len(trained.history_steps), grid.n_levels, grid.restarts)
    write_tensors(
        out_dir / HISTORY,
        {"steps": torch.tensor(trained.history_steps), "loss": history},
    )
    results = results_summary(config, grid, trained, selection, device)
    write_json(out_dir / RESULTS, results)
    return results
