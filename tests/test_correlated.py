"""The course's correlated and anticorrelated feature pairs, in both samplers.

Layout [correlated pairs | anticorrelated pairs | independent features]. The trainer's sampler
(batches.make_samplers) and the evaluation sampler (data.BatchSampler) are checked against the
exact distribution, and against each other, within five standard errors.
"""

import math

import pytest
import torch
from features import distribution

from superposition.analysis.evaluate import evaluate_grid
from superposition.config import DataConfig, TrainConfig
from superposition.engine import batches
from superposition.engine.batches import (
    DenseSampler,
    SparseSampler,
    make_samplers,
    unpack,
)
from superposition.engine.train import train_grid
from superposition.grid import sparsity_grid
from superposition.rng import EVAL_STREAM
from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of
from superposition.tasks.sampling import (
    BatchSampler,
    features_with_pairs,
    pair_features,
)

CPU = torch.device("cpu")
N_FEATURES = 8  # pair 0 correlated (0, 1), pair 1 anticorrelated (2, 3), features 4..7 independent
PAIRS = {"correlated_pairs": 1, "anticorrelated_pairs": 1}
ROWS = 1 << 16


def trainer_batch(task, probability, n_features=N_FEATURES, pairs=PAIRS, steps=8):
    """(instance, row, feature) rows of 2 instances from the fast trainer's sampler."""
    samplers = make_samplers(
        distribution(task, **pairs),
        3,
        torch.arange(2) + 5,
        [probability] * 2,
        ROWS // steps,
        n_features,
    )
    assert len(samplers) == 1
    _, sampler = samplers[0]
    assert isinstance(sampler, DenseSampler)
    return torch.cat([unpack(sampler, sampler(step)) for step in range(steps)], dim=1)


def eval_batch(task, probability, n_features=N_FEATURES, pairs=PAIRS):
    probabilities = torch.full((2,), probability)
    sampler = BatchSampler(
        distribution(task, **pairs),
        3,
        torch.arange(2),
        probabilities,
        ROWS,
        n_features,
        EVAL_STREAM,
    )
    return sampler(0)


SOURCES = {"trainer": trainer_batch, "evaluation": eval_batch}


def assert_within(measured, expected, standard_error, what):
    assert abs(measured - expected) <= 5 * standard_error + 1e-12, (
        f"{what}: measured {measured:.6g}, expected {expected:.6g} ± 5 x {standard_error:.3g}"
    )


def assert_frequency(event, expected, what):
    n = event.numel()
    measured = event.float().mean().item()
    assert_within(measured, expected, math.sqrt(expected * (1 - expected) / n), what)


def assert_uniform_magnitudes(values, task, what):
    """Uniform on [0, 1] (identity) or [-1, 1] (abs): mean, variance and four equal bins."""
    k = values.numel()
    low = -1.0 if task == "abs" else 0.0
    assert values.min() >= low and values.max() <= 1, what
    mean, var = (low + 1) / 2, (1 - low) ** 2 / 12
    assert_within(values.mean().item(), mean, math.sqrt(var / k), f"{what}: mean")
    assert_within(values.var().item(), var, var * math.sqrt(2 / k) * 1.2, f"{what}: variance")
    bins = ((values - low) / (1 - low) * 4).clamp(max=3.999).floor()
    for b in range(4):
        assert_frequency(bins == b, 0.25, f"{what}: quarter {b}")


def correlation(a, b):
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("probability", [0.3, 0.05])
def test_correlated_pair(source, task, probability):
    x = SOURCES[source](task, probability)
    p, first, second = probability, x[..., 0], x[..., 1]
    a, b = first != 0, second != 0
    assert_frequency(a & b, p, "P(both)")
    assert (a ^ b).sum() == 0, "one feature of a correlated pair active without the other"
    assert_frequency(a, p, "P(first)")
    assert_frequency(b, p, "P(second)")
    both = a & b
    assert_uniform_magnitudes(first[both], task, "first magnitude")
    assert_uniform_magnitudes(second[both], task, "second magnitude")
    k = int(both.sum())
    r = correlation(first[both], second[both])
    assert_within(r, 0.0, 1 / math.sqrt(k), "correlation of the two magnitudes")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("probability", [0.3, 0.05])
def test_anticorrelated_pair(source, task, probability):
    x = SOURCES[source](task, probability)
    p, first, second = probability, x[..., 2], x[..., 3]
    a, b = first != 0, second != 0
    assert (a & b).sum() == 0, "both features of an anticorrelated pair active"
    assert_frequency(a, p, "P(first)")
    assert_frequency(b, p, "P(second)")
    assert_frequency(a | b, 2 * p, "P(at least one)")
    assert_uniform_magnitudes(first[a], task, "first magnitude")
    assert_uniform_magnitudes(second[b], task, "second magnitude")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("probability", [0.3, 0.05])
def test_independent_features_and_blocks(source, task, probability):
    x = SOURCES[source](task, probability)
    p, active = probability, x != 0
    for feature in range(4, N_FEATURES):
        assert_frequency(active[..., feature], p, f"P(feature {feature})")
    assert_uniform_magnitudes(x[..., 4:][active[..., 4:]], task, "independent magnitudes")
    # independent features among themselves, and every pair with the other blocks
    for i, j in [(4, 5), (6, 7), (0, 4), (1, 5), (2, 4), (3, 5), (0, 2), (1, 3)]:
        assert_frequency(active[..., i] & active[..., j], p * p, f"P({i} and {j})")


@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("probability", [0.3, 0.05])
def test_trainer_and_evaluation_samplers_agree(task, probability):
    """Two-sample comparison: each feature's activity and mean magnitude, and the four activity
    patterns of each pair."""
    train, held_out = trainer_batch(task, probability), eval_batch(task, probability)

    def compare(event_a, event_b, what):
        fa, fb = event_a.float().mean().item(), event_b.float().mean().item()
        se = math.sqrt(fa * (1 - fa) / event_a.numel() + fb * (1 - fb) / event_b.numel())
        assert_within(fa, fb, se, what)

    a, b = train != 0, held_out != 0
    for feature in range(N_FEATURES):
        compare(a[..., feature], b[..., feature], f"P(feature {feature})")
        va, vb = train[..., feature][a[..., feature]], held_out[..., feature][b[..., feature]]
        se = math.sqrt(va.var().item() / va.numel() + vb.var().item() / vb.numel())
        assert_within(va.mean().item(), vb.mean().item(), se, f"mean magnitude {feature}")
    for i in (0, 2):
        for first in (False, True):
            for second in (False, True):
                pattern = (first, second)
                compare(
                    (a[..., i] == first) & (a[..., i + 1] == second),
                    (b[..., i] == first) & (b[..., i + 1] == second),
                    f"pair at {i}: pattern {pattern}",
                )


@pytest.mark.parametrize("task", ["identity", "abs"])
def test_pair_features_by_hand(task):
    # pairs: correlated present, correlated absent, anticorrelated first, second, absent;
    # then one independent feature
    u = torch.tensor([[[0.02, 0.7, 0.5, 0.2, 0.03, 0.9, 0.12, 0.3, 0.25, 0.01, 0.09]]])
    p = torch.tensor([0.1])
    magnitudes = [0.2, 0.7, 0, 0, 0.3, 0, 0, 0.8, 0, 0, 0.9]
    if task == "abs":
        magnitudes = [2 * m - 1 if m != 0 else 0.0 for m in magnitudes]
    expected = torch.tensor([[magnitudes]])
    x = features_with_pairs(u, p, distribution(task, 2, 3))
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(
        pair_features(u[..., :10], p, distribution(task, 2, 3)), expected[..., :10]
    )


@pytest.mark.parametrize("task", ["identity", "abs"])
def test_pairs_change_only_the_pair_block(task):
    """The same uniforms: the independent features are the features drawn without pairs, and a
    pair's first feature is too (up to rounding: the trainer's path without pairs multiplies by
    1 / p, data.pair_features divides by p); only the pair's second feature differs."""
    without = {"correlated_pairs": 0, "anticorrelated_pairs": 0}
    for sample in (trainer_batch, eval_batch):
        paired = sample(task, 0.3, pairs=PAIRS)
        plain = sample(task, 0.3, pairs=without)
        assert torch.equal(paired[..., 4:], plain[..., 4:])
        torch.testing.assert_close(paired[..., [0, 2]], plain[..., [0, 2]], rtol=1e-6, atol=1e-6)
        assert not torch.equal(paired[..., [1, 3]], plain[..., [1, 3]])


def test_an_anticorrelated_probability_above_one_half_is_refused():
    with pytest.raises(ValueError, match="p <= 0.5"):
        make_samplers(distribution("identity", 0, 1), 0, torch.arange(2), [0.3, 0.6], 16, 6)
    with pytest.raises(ValueError, match="p <= 0.5"):
        BatchSampler(distribution("identity", 0, 1), 0, torch.arange(1), torch.tensor([0.6]), 16, 6)
    with pytest.raises(ValueError, match="do not fit"):
        make_samplers(distribution("identity", 3), 0, torch.arange(1), [0.3], 16, 5)
    make_samplers(distribution("identity", 3), 0, torch.arange(1), [0.6], 16, 6)


def train_cfg() -> TrainConfig:
    return TrainConfig(steps=60, batch_size=256, log_every=20, lr=1e-2)


def test_training_with_pairs_lowers_the_loss():
    spec = ModelSpec("identity", n_features=6, d_hidden=2)
    grid = sparsity_grid([0.3, 0.05], n_features=6, decay=0.9, restarts=2)
    data = DataConfig(correlated_pairs=1, anticorrelated_pairs=1)
    result = train_grid(spec, grid, train_cfg(), seed=0, device=CPU, data=data)
    assert result.finite.all()
    assert (result.loss_history[-1] < result.loss_history[0]).all()
    plain = train_grid(spec, grid, train_cfg(), seed=0, device=CPU)
    assert not torch.equal(result.params["W"], plain.params["W"])


def test_training_with_pairs_never_builds_a_sparse_sampler(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sparse sampler was built for a run with pairs")

    spec = ModelSpec("abs", n_features=40, d_hidden=4)
    grid = sparsity_grid([0.01], n_features=40, decay=0.9, restarts=2)
    # not vacuous: without pairs this level is sampled sparsely
    assert all(
        isinstance(s, SparseSampler)
        for _, s in make_samplers(distribution("abs"), 0, torch.arange(2), [0.01] * 2, 64, 40)
    )
    monkeypatch.setattr(batches, "SparseDraws", refuse)
    monkeypatch.setattr(batches, "SparseSampler", refuse)
    cfg = TrainConfig(steps=3, batch_size=64, log_every=1)
    for data in (DataConfig(correlated_pairs=2), DataConfig(anticorrelated_pairs=1)):
        result = train_grid(spec, grid, cfg, seed=0, device=CPU, data=data)
        assert result.finite.all() and result.sampler_overflows.sum() == 0


def test_evaluation_draws_the_pairs():
    spec = ModelSpec("identity", n_features=6, d_hidden=2)
    grid = sparsity_grid([0.3, 0.1], n_features=6, decay=0.9, restarts=1)
    params = {"W": torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(0))}
    params["b_final"] = torch.zeros(2, 6)
    data = DataConfig(correlated_pairs=1, anticorrelated_pairs=2)
    estimate = evaluate_grid(spec, params, grid, seed=4, rows=2048, device=CPU, data=data)
    assert estimate.method == "monte_carlo"  # pairs are not independent: every row sampled
    losses = estimate.loss
    sampler = BatchSampler(
        distribution("identity", 1, 2),
        4,
        torch.arange(2),
        grid.instance_probability(),
        2048,
        6,
        EVAL_STREAM,
    )
    x = sampler(0)
    importance = grid.instance_importance()
    expected = loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
    torch.testing.assert_close(losses, expected.double())
    plain = evaluate_grid(spec, params, grid, seed=4, rows=2048, device=CPU).loss
    assert not torch.equal(losses, plain)
