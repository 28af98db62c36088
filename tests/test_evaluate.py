"""The held-out loss estimate: exact strata against brute-force integrals, the sampled stratum
against its distribution, the whole against plain Monte Carlo, and its standard error's coverage."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tolerances

from superposition.analysis import strata
from superposition.analysis.evaluate import (
    MONTE_CARLO,
    STRATIFIED,
    evaluate_grid,
    evaluate_instances,
    evaluate_kept,
)
from superposition.analysis.select import gather_best, select_best
from superposition.config import DataConfig
from superposition.grid import sparsity_grid
from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of
from superposition.tasks.sampling import (
    AtLeastTwoActiveSampler,
    FeatureDistribution,
    SecondActiveStrata,
    active_count_distribution,
)

CPU = torch.device("cpu")
SPECS = [
    ModelSpec("identity", 5, 2),
    ModelSpec("identity", 6, 3, hidden_relu=True),
    ModelSpec("abs", 6, 3),
]


def random_params(spec: ModelSpec, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of no particular training, biases of both signs: every ReLU switches somewhere."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: 0.7 * torch.randn(n, *shape, generator=generator)
        for name, shape in spec.param_shapes().items()
    }


def moved(params: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in params.items()}


def brute_force_one_active(spec, params, importance, points: int = 100_001) -> torch.Tensor:
    """E[loss | exactly one active] through the task's reference forward: every feature j at a
    midpoint grid of `points` values over its magnitude range, float64."""
    low, high = spec.definition.magnitudes
    values = low + (torch.arange(points, dtype=torch.float64) + 0.5) * (high - low) / points
    params = {k: v.double() for k, v in params.items()}
    n, f = importance.shape
    total = torch.zeros(n, dtype=torch.float64)
    for j in range(f):
        x = torch.zeros(n, points, f, dtype=torch.float64)
        x[:, :, j] = values
        total += loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
    return total / f


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.task}{'-relu' if s.hidden_relu else ''}")
def test_the_exact_one_active_stratum_matches_a_brute_force_integral(spec, device):
    params = random_params(spec, 3)
    importance = torch.rand(3, spec.n_features, generator=torch.Generator().manual_seed(1))
    model = spec.definition.fast_path(spec.shape)
    exact = strata.one_active_loss(
        model, moved(params, device), importance.to(device), spec.definition.magnitudes
    )
    torch.testing.assert_close(
        exact.cpu(),
        brute_force_one_active(spec, params, importance),
        **tolerances(device, rtol=1e-7, atol=0),
    )


def test_the_piecewise_integral_handles_every_sign_and_the_flat_case():
    a = torch.tensor([2.0, -1.5, 0.0, 0.0, 3.0, -2.0], dtype=torch.float64)
    b = torch.tensor([-0.5, 0.4, 0.3, -0.3, 0.2, -0.1], dtype=torch.float64)
    c = torch.tensor([1.0, 0.0, -1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    exact = strata.squared_error_integral(a, b, c, 0.2, 0.9)
    t = 0.2 + (torch.arange(1_000_000, dtype=torch.float64) + 0.5) * 0.7 / 1_000_000
    integrand = (c[:, None] * t - torch.relu(a[:, None] * t + b[:, None])).pow(2)
    torch.testing.assert_close(exact, integrand.mean(dim=1) * 0.7, rtol=1e-9, atol=0)


def test_the_no_active_stratum_is_the_loss_of_the_zero_row():
    spec = ModelSpec("abs", 4, 2)
    params = random_params(spec, 2)
    importance = torch.ones(2, 4)
    expected = params["b_final"].relu().pow(2).mean(dim=1).double()
    torch.testing.assert_close(strata.no_active_loss(spec, params, importance), expected)


def test_the_active_counts_are_binomial_and_their_tail_keeps_its_digits():
    probability = torch.tensor([1.0, 0.3, 1e-3])
    counts = active_count_distribution(probability, 5)
    for row, p in zip(counts, probability.tolist(), strict=True):  # p as float32 holds it
        expected = [math.comb(5, k) * p**k * (1 - p) ** (5 - k) for k in range(6)]
        torch.testing.assert_close(
            row, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
        )
    # P(K >= 2) at p = 0.001: 9.98e-6, which 1 - P(0) - P(1) gets to about 1e-11 only
    assert counts[2, 2:].sum().item() == pytest.approx(9.98003e-6, rel=1e-5)


@pytest.mark.parametrize("kind", ["pairs", "second", "one"])
def test_rows_given_two_or_more_active_follow_their_conditional_distribution(kind):
    """Rows drawn stratum by stratum in proportion to the strata's probabilities (every kind of
    SecondActiveStrata) against the exact conditional distribution of K ≥ 2 independent
    features: the count of active features, each feature's and each pair's activity."""
    f, p, rows = 5, 0.2, 200_000
    features = FeatureDistribution((-1.0, 1.0))
    sampled = SecondActiveStrata(f, kind)
    weights = sampled.weights(torch.tensor([p]))[0]
    assert weights.sum().item() == pytest.approx(1.0)
    counts = (weights * rows).round().long()
    stratum = torch.repeat_interleave(torch.arange(sampled.n_strata), counts).unsqueeze(0)
    x = AtLeastTwoActiveSampler(
        features, 0, torch.tensor([0]), torch.tensor([p]), sampled, stratum
    )()
    active = x[0] != 0
    n = active.shape[0]
    # the exact distribution: every one of the 2^f activity patterns with ≥ 2 active
    patterns = torch.tensor(
        [[(m >> i) & 1 for i in range(f)] for m in range(2**f) if bin(m).count("1") >= 2]
    ).bool()
    k = patterns.sum(dim=1).double()
    probability = p**k * (1 - p) ** (f - k)
    probability /= probability.sum()

    def close(observed, expected):
        se = (expected * (1 - expected) / n).sqrt()
        assert ((observed - expected).abs() <= 4 * se + 1e-6).all(), (observed, expected)

    counted = active.sum(dim=1)
    for count in range(2, f + 1):
        close(
            torch.tensor([(counted == count).double().mean()]),
            probability[k == count].sum().view(1),
        )
    close(active.double().mean(dim=0), (probability.unsqueeze(1) * patterns).sum(dim=0))
    both = (active[:, :, None] & active[:, None, :]).double().mean(dim=0)
    pair = patterns[:, :, None] & patterns[:, None, :]
    close(both.flatten(), (probability.view(-1, 1, 1) * pair).sum(dim=0).flatten())
    values = x[0][active]
    assert values.min() > -1 and values.max() <= 1
    assert abs(values.mean().item()) < 4 / math.sqrt(3 * values.numel())


def test_rows_from_an_offset_are_fresh_rows():
    features, sampled = FeatureDistribution((0.0, 1.0)), SecondActiveStrata(6, "one")
    stratum = torch.zeros(1, 20, dtype=torch.long)

    def rows(offset, count):
        at = stratum[:, :count]
        return AtLeastTwoActiveSampler(
            features, 0, torch.tensor([0]), torch.tensor([0.3]), sampled, at, offset
        )()[0]

    x = rows(0, 20)
    assert torch.equal(rows(10, 10), x[10:]) and not torch.equal(rows(10, 10), x[:10])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.task}{'-relu' if s.hidden_relu else ''}")
def test_a_single_active_feature_loss_is_the_reference_forward_s(spec, device):
    params = random_params(spec, 2, seed=6)
    importance = torch.rand(2, spec.n_features, generator=torch.Generator().manual_seed(2))
    model = spec.definition.fast_path(spec.shape)
    generator = torch.Generator().manual_seed(3)
    feature = torch.randint(spec.n_features, (2, 50), generator=generator)
    low, high = spec.definition.magnitudes
    value = low + (high - low) * torch.rand(2, 50, generator=generator)
    x = torch.zeros(2, 50, spec.n_features).scatter_(-1, feature.unsqueeze(-1), value.unsqueeze(-1))
    expected = loss_per_row(spec, params, importance, x)
    alone = strata.SingleActiveLoss(model, moved(params, device), importance.to(device))
    torch.testing.assert_close(
        alone(feature.to(device), value.to(device)).cpu(),
        expected,
        **tolerances(device, rtol=1e-5, atol=1e-7),
    )


def loss_per_row(spec, params, importance, x):
    error = (target_of(spec, x) - forward(spec, params, x)).pow(2)
    return (importance.unsqueeze(1) * error).mean(dim=2)


def plain_monte_carlo(spec, params, probability, importance, rows, seed):
    """An independent evaluation: torch's own generator and the reference forward."""
    generator = torch.Generator().manual_seed(seed)
    low, high = spec.definition.magnitudes
    n, f = importance.shape
    total, squares, batch = (
        torch.zeros(n, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
        250_000,
    )
    for _ in range(rows // batch):
        u = torch.rand(n, batch, f, generator=generator)
        m = torch.rand(n, batch, f, generator=generator)
        x = torch.where(u < probability.view(-1, 1, 1), low + (high - low) * m, 0.0)
        error = (target_of(spec, x) - forward(spec, params, x)).pow(2)
        per_row = (importance.unsqueeze(1) * error).mean(dim=2).double()
        total += per_row.sum(dim=1)
        squares += per_row.pow(2).sum(dim=1)
    mean = total / rows
    return mean, ((squares / rows - mean.pow(2)) / rows).sqrt()


@pytest.mark.parametrize(
    "spec, p, rows",
    [(SPECS[0], 0.01, 10_000_000), (SPECS[2], 0.01, 10_000_000), (SPECS[2], 0.3, 2_000_000)],
    ids=["identity-sparse", "abs-sparse", "abs-dense"],
)
def test_the_stratified_estimate_agrees_with_plain_monte_carlo(spec, p, rows):
    probability = torch.tensor([p])
    params = random_params(spec, 1, seed=3)
    importance = 0.9 ** torch.arange(spec.n_features).float().expand(1, -1)
    estimate = evaluate_instances(
        spec, params, torch.arange(1), probability, importance, 0, 50_000, CPU
    )
    assert estimate.method == STRATIFIED
    mean, se = plain_monte_carlo(spec, params, probability, importance, rows, seed=7)
    z = (estimate.loss - mean) / (estimate.se.pow(2) + se.pow(2)).sqrt()
    assert z.abs().item() < 4, z
    if p <= 0.01:  # the sampled stratum carries 0.15 % of the probability: at equal rows the
        # error is far smaller
        assert estimate.se.item() * math.sqrt(50_000 / rows) < se.item() / 30


def test_the_standard_error_covers_the_truth_as_often_as_it_says():
    """300 independent estimates (one level key each) of the same weights at p = 0.3, where the
    sampled stratum carries most of the probability, against a 10⁶-row reference."""
    spec = ModelSpec("identity", 5, 2)
    repeats, p = 300, 0.3
    params = {k: v.expand(repeats, *v.shape[1:]) for k, v in random_params(spec, 1, 5).items()}
    probability = torch.full((repeats,), p)
    importance = torch.ones(repeats, 5)
    estimates = evaluate_instances(
        spec, params, torch.arange(repeats), probability, importance, 1, 2000, CPU
    )
    one = {k: v[:1] for k, v in params.items()}
    truth = evaluate_instances(
        spec, one, torch.tensor([10_000]), probability[:1], importance[:1], 1, 1_000_000, CPU
    )
    z = (estimates.loss - truth.loss) / estimates.se
    inside = (z.abs() < 1.96).float().mean().item()
    assert 0.90 <= inside <= 0.99, inside
    assert truth.se.item() < estimates.se.median().item() / 20


def test_the_standard_error_is_honest_where_the_sampled_rows_hold_rare_events():
    """The zero model at p = 0.1, whose loss is known exactly (mean(I) · p / 3): a stratum's
    extra active feature is a rare event there, which a stratum of a few rows would miss and
    then report no spread for. 300 independent estimates of 2000 rows each."""
    spec = ModelSpec("identity", 5, 2)
    repeats, p = 300, 0.1
    params = {"W": torch.zeros(repeats, 2, 5), "b_final": torch.zeros(repeats, 5)}
    importance = (0.9 ** torch.arange(5.0)).expand(repeats, -1)
    estimates = evaluate_instances(
        spec, params, torch.arange(repeats), torch.full((repeats,), p), importance, 3, 2000, CPU
    )
    truth = importance[0].double().mean() * p / 3
    z = (estimates.loss - truth) / estimates.se
    inside = (z.abs() < 1.96).float().mean().item()
    assert 0.90 <= inside <= 0.99, inside
    assert abs(z.mean().item()) < 4 / math.sqrt(repeats)  # no bias beyond noise


def test_pairs_are_estimated_by_plain_monte_carlo_with_its_error():
    spec = ModelSpec("identity", 6, 2)
    grid = sparsity_grid([0.3], n_features=6, decay=1.0, restarts=200)
    params = {k: v.expand(200, *v.shape[1:]) for k, v in random_params(spec, 1, 2).items()}
    data = DataConfig(correlated_pairs=1, anticorrelated_pairs=1)
    # one level: every restart sees the same rows, so take the spread over the rows' offsets
    estimates = [
        evaluate_instances(
            spec,
            {k: v[:1] for k, v in params.items()},
            torch.tensor([0]),
            torch.tensor([0.3]),
            grid.importance[:1].float(),
            seed,
            4000,
            CPU,
            data,
        )
        for seed in range(60)
    ]
    assert {e.method for e in estimates} == {MONTE_CARLO}
    losses = torch.cat([e.loss for e in estimates])
    se = torch.cat([e.se for e in estimates])
    # the reported error matches the spread of independent estimates within sampling noise
    assert 0.75 < (losses.std() / se.mean()).item() < 1.3


def test_near_best_lists_the_restarts_the_error_cannot_tell_apart():
    loss = torch.tensor([1.00, 1.01, 1.20, 2.0, 2.0001, 2.5], dtype=torch.float64)
    se = torch.tensor([0.01, 0.01, 0.01, 1e-5, 1e-5, 1e-5], dtype=torch.float64)
    finite = torch.tensor([True, True, True, True, True, False])
    selection = select_best(loss, finite, restarts=3, eval_loss_se=se)
    assert selection.best_restart == [0, 0]
    assert selection.near_best == [[0, 1], [0]]  # 2.0001 is 7 SE away; restart 5 excluded


def test_the_kept_restart_is_reported_on_fresh_rows(device):
    spec = ModelSpec("identity", 5, 2)
    grid = sparsity_grid([1.0, 0.1], n_features=5, decay=0.9, restarts=4)
    params = random_params(spec, grid.n_instances, seed=4)
    estimate = evaluate_grid(spec, params, grid, seed=0, rows=4000, device=device)
    selection = select_best(estimate.loss, torch.ones(8, dtype=torch.bool), 4, estimate.se)
    kept = evaluate_kept(spec, gather_best(params, selection, 4), grid, 0, 4000, device)
    chosen = estimate.loss.view(2, 4)[torch.arange(2), torch.tensor(selection.best_restart)]
    assert not torch.equal(kept.loss, chosen)  # other rows
    z = (kept.loss - chosen) / (kept.se.pow(2) + estimate.se.view(2, 4)[0].pow(2).mean()).sqrt()
    assert (z.abs() < 5).all()


def test_one_feature_and_one_row_are_estimated_without_a_sampled_stratum_or_a_false_error(device):
    """One feature never has two active: the estimate is exact, (1 − p) L(0) + p E[L(v)], with
    no error. One sampled row has no spread to measure: its error is unknown (NaN), not 0."""
    spec = ModelSpec("identity", 1, 1)
    params = {"W": torch.tensor([[[0.8]]]), "b_final": torch.tensor([[0.1]])}
    p = torch.tensor([0.3])
    estimate = evaluate_instances(
        spec, params, torch.tensor([0]), p, torch.ones(1, 1), 0, 100, device
    )
    v = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    exact = 0.7 * 0.1**2 + 0.3 * (v - (0.64 * v + 0.1).relu()).pow(2).mean()
    assert estimate.loss.item() == pytest.approx(exact.item(), rel=1e-6)  # float32 weights
    assert estimate.se.item() == 0
    spec = ModelSpec("identity", 5, 2)
    one_row = evaluate_instances(
        spec, random_params(spec, 1), torch.tensor([0]), p, torch.ones(1, 5), 0, 1, device
    )
    assert torch.isfinite(one_row.loss).all() and torch.isnan(one_row.se).all()
