"""The closed-form reference losses (tasks' baselines and closed_forms) against a Monte Carlo of
the very configuration they describe, run through the package's reference forward and loss; and
what a job records of them per level."""

from __future__ import annotations

import math

import pytest
import torch

from superposition import tasks
from superposition.job import level_references
from superposition.run import to_config
from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of

CHUNKS, ROWS = 64, 8192  # half a million rows; the standard error from the chunks' spread


def monte_carlo(
    spec: ModelSpec, params: dict[str, torch.Tensor], importance: list[float], p: float
) -> tuple[float, float]:
    """(mean, standard error) of the loss of one model (params without an instance axis) on
    independent features, active with probability p, magnitudes uniform in the task's range;
    sampled here, not by the package's sampler."""
    generator = torch.Generator().manual_seed(1234)
    n = spec.n_features
    low, high = spec.definition.magnitudes
    shape = (CHUNKS, ROWS, n)
    active = torch.rand(shape, generator=generator, dtype=torch.float64) < p
    magnitude = low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
    x = torch.where(active, magnitude, 0.0)
    stacked = {k: v.double().unsqueeze(0).expand(CHUNKS, *v.shape) for k, v in params.items()}
    out = forward(spec, stacked, x)
    weights = torch.tensor(importance, dtype=torch.float64).expand(CHUNKS, n)
    losses = loss_per_instance(out, target_of(spec, x), weights)
    return losses.mean().item(), (losses.std() / math.sqrt(CHUNKS)).item()


def assert_matches(closed_form: float, sampled: tuple[float, float]) -> None:
    mean, se = sampled
    assert abs(mean - closed_form) <= 4 * se + 1e-12, (closed_form, mean, se)


def order_of(importance: list[float]) -> list[int]:
    return sorted(range(len(importance)), key=lambda i: -importance[i])


# shuffled, so that "the most important features" is not "the first ones"
IMPORTANCE = [0.6, 1.0, 0.3, 0.8, 0.45]
PROBABILITIES = [1.0, 0.3, 0.05]


@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("p", PROBABILITIES)
def test_constant_is_the_zero_model_with_bias_p_over_2(task, p):
    spec = ModelSpec(task, n_features=5, d_hidden=4)
    params = {k: torch.zeros(shape) for k, shape in spec.param_shapes().items()}
    params["b_final"] = torch.full((5,), p / 2)
    closed = spec.definition.baselines(IMPORTANCE, p, 4)["constant"]
    assert closed == pytest.approx(sum(IMPORTANCE) * (p / 3 - p**2 / 4) / 5)
    assert_matches(closed, monte_carlo(spec, params, IMPORTANCE, p))


@pytest.mark.parametrize("hidden_relu", [False, True])
@pytest.mark.parametrize("d_hidden", [2, 5])
@pytest.mark.parametrize("p", PROBABILITIES)
def test_identity_dedicated_represents_the_most_important_features_exactly(
    hidden_relu, d_hidden, p
):
    spec = ModelSpec("identity", n_features=5, d_hidden=d_hidden, hidden_relu=hidden_relu)
    kept = order_of(IMPORTANCE)[:d_hidden]
    W = torch.zeros(d_hidden, 5)
    for row, feature in enumerate(kept):
        W[row, feature] = 1.0
    # the bias acts on every output: 0 on the represented ones, p / 2 on the rest
    b = torch.tensor([0.0 if i in kept else p / 2 for i in range(5)])
    closed = spec.definition.baselines(IMPORTANCE, p, d_hidden)["dedicated"]
    if d_hidden >= 5:
        assert closed == 0
    assert_matches(closed, monte_carlo(spec, {"W": W, "b_final": b}, IMPORTANCE, p))


@pytest.mark.parametrize("d_hidden", [5, 4, 10])
@pytest.mark.parametrize("p", PROBABILITIES)
def test_abs_dedicated_computes_the_most_important_features_by_two_neurons(d_hidden, p):
    spec = ModelSpec("abs", n_features=5, d_hidden=d_hidden)
    kept = order_of(IMPORTANCE)[: d_hidden // 2]
    W1, W2 = torch.zeros(d_hidden, 5), torch.zeros(5, d_hidden)
    for k, feature in enumerate(kept):  # |x| = ReLU(x) + ReLU(-x)
        W1[2 * k, feature], W1[2 * k + 1, feature] = 1.0, -1.0
        W2[feature, 2 * k] = W2[feature, 2 * k + 1] = 1.0
    b = torch.tensor([0.0 if i in kept else p / 2 for i in range(5)])
    closed = spec.definition.baselines(IMPORTANCE, p, d_hidden)["dedicated"]
    params = {"W1": W1, "W2": W2, "b_final": b}
    assert_matches(closed, monte_carlo(spec, params, IMPORTANCE, p))


PHASE_CONFIGS = {"drop": [[1.0, 0.0]], "dedicate": [[0.0, 1.0]], "antipodal": [[1.0, -1.0]]}


@pytest.mark.parametrize("r", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.8])
def test_the_three_configurations_of_the_2_to_1_model(r, p):
    spec = ModelSpec("identity", n_features=2, d_hidden=1)
    importance = [1.0, r]
    closed = spec.definition.closed_forms(importance, p, spec.shape)
    assert sorted(closed) == sorted(PHASE_CONFIGS)
    for name, W in PHASE_CONFIGS.items():
        params = {"W": torch.tensor(W), "b_final": torch.zeros(2)}
        assert_matches(closed[name], monte_carlo(spec, params, importance, p))


def test_closed_forms_apply_to_the_2_to_1_model_without_hidden_relu_only():
    closed_forms = tasks.get("identity").closed_forms
    assert closed_forms([1.0, 1.0, 1.0], 0.1, tasks.Shape(3, 2)) is None
    assert closed_forms([1.0, 1.0], 0.1, tasks.Shape(2, 1, hidden_relu=True)) is None
    assert tasks.get("abs").closed_forms is None


def test_a_phase_level_gets_every_reference(compose_config):
    config = to_config(compose_config("preset=phase_diagram"))
    refs = level_references(config, [1.0, 3.0], 0.3, 3.0)
    configs = {"drop": 3.0 * 0.3 / 6, "dedicate": 0.3 / 6, "antipodal": 0.09 * 4 / 12}
    assert refs["loss_closed_form_configs"] == pytest.approx(configs)
    assert refs["loss_closed_form"] == pytest.approx(0.03)
    assert refs["loss_constant"] == pytest.approx(4 * (0.1 - 0.09 / 4) / 2)
    assert refs["loss_dedicated"] == pytest.approx(1 * (0.1 - 0.09 / 4) / 2)


@pytest.mark.parametrize(
    "overrides, relative",
    [
        (["task=identity"], None),  # not a phase sweep
        (["preset=phase_diagram", "model.n_features=3", "model.d_hidden=2"], 3.0),
        (["preset=phase_diagram", "model.hidden_relu=true"], 3.0),
        (["task=abs", "model.n_features=2", "model.d_hidden=1"], 3.0),
    ],
)
def test_no_closed_form_outside_the_2_to_1_phase_sweep(compose_config, overrides, relative):
    config = to_config(compose_config(*overrides))
    importance = [1.0] * (config.model.n_features - 1) + [3.0]
    refs = level_references(config, importance, 0.3, relative)
    assert refs["loss_closed_form"] is None and refs["loss_closed_form_configs"] is None
    assert refs["loss_constant"] is not None and refs["loss_dedicated"] is not None
