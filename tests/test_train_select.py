"""Training over the instance axis, chunking, frozen instances, held-out evaluation, selection."""

import math

import pytest
import torch
from conftest import assert_reproduced, tolerances

from superposition.analysis.evaluate import evaluate_grid
from superposition.analysis.select import gather_best, select_best
from superposition.config import Engine, TrainConfig
from superposition.engine import bytes_per_instance
from superposition.engine.device import plan_chunk_size
from superposition.engine.train import train_grid
from superposition.grid import InstanceGrid, sparsity_grid
from superposition.tasks.model import ModelSpec

CPU = torch.device("cpu")
SPEC = ModelSpec("identity", n_features=5, d_hidden=2)


def small_grid(restarts: int = 3) -> InstanceGrid:
    return sparsity_grid([1.0, 0.1], n_features=5, decay=0.9, restarts=restarts)


def train_cfg(**overrides) -> TrainConfig:
    values = dict(steps=60, batch_size=256, log_every=20, lr=1e-2)
    values.update(overrides)
    return TrainConfig(**values)


def test_training_lowers_the_loss_and_records_history(device):
    result = train_grid(SPEC, small_grid(), train_cfg(), seed=0, device=device)
    assert result.params["W"].shape == (6, 2, 5)
    assert result.history_steps == [0, 20, 40, 59]
    assert result.loss_history.shape == (4, 6)
    assert (result.loss_history[-1] < result.loss_history[0]).all()
    assert result.finite.all()


def test_same_seed_same_result_other_seed_other_result(device):
    a = train_grid(SPEC, small_grid(), train_cfg(), seed=1, device=device)
    b = train_grid(SPEC, small_grid(), train_cfg(), seed=1, device=device)
    c = train_grid(SPEC, small_grid(), train_cfg(), seed=2, device=device)
    assert_reproduced(device, b.params["W"], a.params["W"])
    assert not torch.allclose(a.params["W"], c.params["W"])


def test_chunked_training_gives_the_unchunked_result(device):
    spec = ModelSpec("abs", n_features=6, d_hidden=3)
    grid = sparsity_grid([1.0, 0.3, 0.05], n_features=6, decay=0.8, restarts=3)
    whole = train_grid(spec, grid, train_cfg(), seed=0, device=device)
    chunked = train_grid(spec, grid, train_cfg(chunk_size=4), seed=0, device=device)
    assert whole.chunk_size == 9 and chunked.chunk_size == 4
    for name in ("W1", "W2", "b_final"):
        assert chunked.params[name].shape == whole.params[name].shape
        torch.testing.assert_close(
            chunked.params[name], whole.params[name], **tolerances(device, 1e-5, 1e-6)
        )
    torch.testing.assert_close(
        chunked.loss_history, whole.loss_history, **tolerances(device, 1e-5, 1e-7)
    )


def test_memory_budget_sets_the_chunk_size():
    each = bytes_per_instance(SPEC, Engine.fast, 1024)
    per_instance_budget = plan_chunk_size(each, 10_000, CPU, memory_budget_mb=1.0)
    assert per_instance_budget == 2**20 // each
    assert 1 <= per_instance_budget < 10_000
    assert plan_chunk_size(each, 10_000, CPU, memory_budget_mb=2.0) > per_instance_budget
    assert plan_chunk_size(each, 10, CPU, chunk_size=4) == 4
    assert plan_chunk_size(each, 10, CPU, memory_budget_mb=1e6) == 10


def test_a_non_finite_instance_is_frozen_and_excluded_while_the_rest_train_on(device):
    clean = small_grid()
    importance = clean.importance.clone()
    poisoned = InstanceGrid(clean.feature_probability, importance, clean.restarts)
    # an infinite importance makes every restart of level 1 non-finite at the first step
    importance[1, 0] = math.inf
    result = train_grid(SPEC, poisoned, train_cfg(), seed=0, device=device)
    reference = train_grid(SPEC, clean, train_cfg(), seed=0, device=device)
    assert result.finite.tolist() == [True, True, True, False, False, False]
    # level 0 trains exactly as without the poisoned level
    assert_reproduced(device, result.params["W"][:3], reference.params["W"][:3])
    # frozen instances keep finite weights (those before the bad step)
    assert torch.isfinite(result.params["W"]).all()
    losses = evaluate_grid(SPEC, result.params, poisoned, 0, 1024, device).loss
    selection = select_best(losses, result.finite, poisoned.restarts)
    assert selection.best_restart[1] is None and selection.best_loss[1] is None
    assert selection.best_restart[0] is not None
    assert selection.excluded == [(1, 0), (1, 1), (1, 2)]
    chosen = gather_best(result.params, selection, poisoned.restarts)
    assert chosen["W"].shape == (2, 2, 5)
    assert torch.isnan(chosen["W"][1]).all() and torch.isfinite(chosen["W"][0]).all()


def test_selection_takes_the_lowest_finite_loss_per_level():
    eval_loss = torch.tensor([0.3, 0.1, 0.2, float("nan"), 0.5, 0.4])
    finite = torch.tensor([True, False, True, True, True, True])
    selection = select_best(eval_loss, finite, restarts=3)
    assert selection.best_restart == [2, 2]
    assert selection.best_loss == pytest.approx([0.2, 0.4])
    assert selection.excluded == [(0, 1), (1, 0)]
    params = {"W": torch.arange(6.0).view(6, 1, 1)}
    assert gather_best(params, selection, 3)["W"].flatten().tolist() == [2.0, 5.0]


def test_held_out_loss_is_shared_across_restarts_and_independent_of_training_data(device):
    grid = small_grid(restarts=2)
    params = {
        "W": torch.zeros(4, 2, 5),
        "b_final": torch.zeros(4, 5),
    }
    estimate = evaluate_grid(SPEC, params, grid, seed=0, rows=20_000, device=device)
    losses, se = estimate.loss, estimate.se
    # zero model: loss = mean_i I_i E[x_i^2] = mean(I) * p / 3, the same rows for both restarts
    expected = grid.importance[0].mean().item() / 3
    assert_reproduced(device, losses[1], losses[0])
    assert_reproduced(device, se[1], se[0])
    assert abs(losses[0].item() - expected) < 4 * se[0]
    assert abs(losses[2].item() - 0.1 * expected) < 4 * se[2]
