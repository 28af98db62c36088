"""The fast trainer's parts against the straightforward computation.

gradients.loss_and_gradients against autograd through model.forward on the whole batch that a
packed batch stands for; the samplers' distribution (marginals, magnitudes, co-occurrence,
all-zero rows) against the exact values, within five standard errors.
"""

import math

import pytest
import torch
from conftest import assert_reproduced, same_on_the_cpu, tolerances
from features import distribution

from superposition.config import TrainConfig
from superposition.engine import batches
from superposition.engine.batches import (
    DenseSampler,
    SparseSampler,
    make_samplers,
    unpack,
)
from superposition.engine.fast.gradients import FastModel, Workspace, gram_pays, loss_and_gradients
from superposition.engine.train import ChunkRun
from superposition.tasks.model import ModelSpec, forward, init_params, loss_per_instance, target_of

CPU = torch.device("cpu")
SPECS = [
    ModelSpec("identity", 5, 2),  # small enough for the Gram-matrix path (gram_pays)
    ModelSpec("identity", 12, 4),
    ModelSpec("identity", 12, 4, hidden_relu=True),
    ModelSpec("abs", 12, 4),
]


def sampler_for(
    spec,
    probability,
    n_instances=3,
    batch_size=64,
    sync_free=None,
    as_entries=None,
    device=CPU,
):
    instances = torch.arange(n_instances, device=device) + 10
    (part, sampler), *_ = make_samplers(
        distribution(spec.task),
        7,
        instances,
        [probability] * n_instances,
        batch_size,
        spec.n_features,
    )
    if isinstance(sampler, SparseSampler):
        if sync_free is not None:
            sampler.sync_free = sync_free
        if as_entries is not None:
            sampler.as_entries = as_entries
            sampler.storage = torch.empty(sampler.x_size, device=device)
    return sampler


def autograd_loss_and_grads(spec, params, x, importance):
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = loss_per_instance(forward(spec, leaves, x), target_of(spec, x), importance)
    loss.sum().backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.task}-relu{s.hidden_relu}")
@pytest.mark.parametrize(
    "probability, sync_free, as_entries",
    [
        (1.0, None, None),
        (0.4, None, None),
        (0.05, False, False),
        (0.05, True, False),
        (0.05, False, True),
        (0.05, True, True),
        (0.01, False, True),
    ],
)
def test_hand_written_gradients_equal_autograd(spec, probability, sync_free, as_entries, device):
    sampler = sampler_for(
        spec, probability, sync_free=sync_free, as_entries=as_entries, device=device
    )
    assert isinstance(sampler, SparseSampler) == (probability <= batches.SPARSE_MAX_DENSITY)
    model = FastModel.of(spec)
    assert gram_pays(model) == (spec.n_features == 5)
    params = init_params(spec, 3, torch.arange(3, device=device))
    params["b_final"] = torch.linspace(-0.3, 0.3, 3 * spec.n_features, device=device).view(3, -1)
    importance = 0.9 ** torch.arange(spec.n_features, device=device).float().expand(3, -1)
    grads = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
    work = Workspace(model, 3, sampler.max_rows, device)
    for step in (0, 5):
        batch = sampler(step)
        assert (batch.entries is not None) == bool(as_entries)
        if isinstance(sampler, SparseSampler) and sync_free is True:
            assert batch.n_rows == sampler.n_rows
        full = unpack(sampler, batch)
        assert full.shape == (3, 64, spec.n_features)
        assert batch.n_rows + batch.zero_rows == 64
        loss = loss_and_gradients(model, params, batch, importance, grads, work, want_loss=True)
        expected_loss, expected_grads = autograd_loss_and_grads(spec, params, full, importance)
        torch.testing.assert_close(loss, expected_loss, **tolerances(device, 1e-5, 1e-7))
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, **tolerances(device, 1e-4, 1e-7))


def test_no_loss_unless_asked_and_the_same_gradients(device):
    spec = SPECS[2]
    sampler = sampler_for(spec, 0.05, device=device)
    params = init_params(spec, 3, torch.arange(3, device=device))
    importance = torch.ones(3, spec.n_features, device=device)
    model = FastModel.of(spec)
    work = Workspace(model, 3, sampler.max_rows, device)
    with_loss = {k: torch.empty_like(v) for k, v in params.items()}
    without = {k: torch.empty_like(v) for k, v in params.items()}
    batch = sampler(2)
    assert loss_and_gradients(model, params, batch, importance, with_loss, work, True) is not None
    batch = sampler(2)
    assert loss_and_gradients(model, params, batch, importance, without, work, False) is None
    for name in params:
        assert_reproduced(device, without[name], with_loss[name])


def whole_batches(task, probability, n_features, n_steps, batch_size=512):
    spec = ModelSpec(task, n_features, 2)
    sampler = sampler_for(spec, probability, n_instances=2, batch_size=batch_size)
    return sampler, torch.cat([unpack(sampler, sampler(step)) for step in range(n_steps)], dim=1)


def assert_within(measured, expected, standard_error, what):
    assert abs(measured - expected) <= 5 * standard_error + 1e-12, (
        f"{what}: measured {measured:.6g}, expected {expected:.6g} ± 5 x {standard_error:.3g}"
    )


@pytest.mark.parametrize("task", ["identity", "abs"])
@pytest.mark.parametrize("probability, n_features", [(0.5, 6), (0.15, 6), (0.02, 40), (0.002, 200)])
def test_sampler_distribution(task, probability, n_features):
    sampler, x = whole_batches(task, probability, n_features, n_steps=40)
    kind = SparseSampler if probability <= batches.SPARSE_MAX_DENSITY else DenseSampler
    assert isinstance(sampler, kind)
    active = x != 0
    n = active.numel()
    # marginal: every entry active with probability p
    p = probability
    assert_within(active.float().mean().item(), p, math.sqrt(p * (1 - p) / n), "P(active)")
    # per feature (coarser: fewer trials each)
    per_feature = active.float().mean(dim=(0, 1))
    trials = n / n_features
    assert (per_feature - p).abs().max() <= 5 * math.sqrt(p * (1 - p) / trials) + 1e-12
    # magnitudes given active: uniform on [0, 1] (identity) or [-1, 1] (abs)
    values = x[active]
    k = values.numel()
    low = -1.0 if task == "abs" else 0.0
    mean, var = (low + 1) / 2, (1 - low) ** 2 / 12
    assert_within(values.mean().item(), mean, math.sqrt(var / k), "mean magnitude")
    assert values.min() >= low and values.max() <= 1
    assert_within(values.var().item(), var, var * math.sqrt(2 / k) * 1.2, "magnitude variance")
    # co-occurrence of two features of the same row: p^2 (independence)
    pair = (active[..., 0] & active[..., 1]).float().mean().item()
    m = active[..., 0].numel()
    assert_within(pair, p * p, math.sqrt(p * p * (1 - p * p) / m), "P(both active)")
    # neighbouring entries across a row boundary: also independent
    across = (active[:, :-1, -1] & active[:, 1:, 0]).float().mean().item()
    assert_within(across, p * p, math.sqrt(p * p * (1 - p * p) / m), "P(last and next first)")
    # all-zero rows: (1 - p)^features
    q = (1 - p) ** n_features
    zero_rows = (~active.any(dim=-1)).float().mean().item()
    assert_within(zero_rows, q, math.sqrt(q * (1 - q) / m), "P(row all zero)")
    # active count per row: Binomial(features, p) variance
    counts = active.sum(dim=-1).float()
    assert_within(counts.var().item(), n_features * p * (1 - p), 0.1 * n_features * p + 1e-3, "var")
    assert sampler.overflows.sum() == 0


def test_sparse_draws_of_an_instance_do_not_depend_on_its_neighbours(device):
    instances = torch.tensor([4, 9, 2, 7], device=device)
    task, n_features = "identity", 30
    together = make_samplers(
        distribution(task), 1, instances, [0.01, 0.1, 0.003, 0.1], 256, n_features
    )

    def whole(samplers, index):
        part, sampler = next((p, s) for p, s in samplers if p.start <= index < p.stop)
        return unpack(sampler, sampler(3))[index - part.start]

    def alone(on: torch.device):
        instance = torch.tensor([9], device=on)
        return whole(make_samplers(distribution(task), 1, instance, [0.1], 256, n_features), 0)

    drawn_alone = same_on_the_cpu(device, alone)
    assert (drawn_alone != 0).sum() > 500
    assert torch.equal(whole(together, 1), drawn_alone)
    assert not torch.equal(whole(together, 3), drawn_alone)  # same p, other instance


def test_a_batch_beyond_the_capacity_is_cut_and_counted(monkeypatch):
    monkeypatch.setattr(batches, "CAPACITY_SIGMAS", -3.0)  # capacity well below the mean
    sampler = sampler_for(ModelSpec("identity", 20, 4), 0.1, batch_size=128)
    batch = sampler(0)
    assert (sampler.overflows == 1).all()
    drawn = (unpack(sampler, batch) != 0).flatten(1).sum(dim=1)
    assert (drawn <= sampler.n_slots).all() and (drawn < 0.1 * 128 * 20).all()
    sampler(1)
    assert (sampler.overflows == 2).all()


def test_capacities_follow_the_mean_plus_ten_sigma():
    entries, rows = batches.sparse_capacities(0.001, 1024, 200)
    mean, sigma = 204.8, math.sqrt(204.8 * 0.999)
    assert entries == math.ceil(mean + 10 * sigma + 10)
    q = 1 - 0.999**200
    assert rows == math.ceil(1024 * q + 10 * math.sqrt(1024 * q * (1 - q)) + 10)
    assert batches.sparse_capacities(0.9, 64, 10) == (640, 64)  # never above the batch


def test_a_sync_free_step_reads_nothing_from_the_device(monkeypatch, device):
    """On a GPU a step must not wait for the device. ChunkRun(sync_free=True) (the GPU's
    setting) runs with every way of reading a tensor's value into Python disabled, and agrees
    with the CPU's setting (sparse batches sized exactly): on the CPU, and on a GPU itself."""
    spec = ModelSpec("abs", 30, 6)
    cfg = TrainConfig(steps=12, batch_size=128, log_every=5, lr=1e-2)
    probability = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    importance = torch.ones(6, 30, device=device)
    instances = torch.arange(6, device=device)
    runs = {
        sync_free: ChunkRun(spec, cfg, 0, instances, probability, importance, None, sync_free)
        for sync_free in (False, True)
    }

    def no_reading(*args, **kwargs):
        raise AssertionError("a step read a tensor's value on the host")

    with monkeypatch.context() as patched:
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            patched.setattr(torch.Tensor, name, no_reading)
        while not runs[True].done:
            runs[True].advance()
    while not runs[False].done:
        runs[False].advance()
    close = tolerances(device, 1.3e-6, 1e-5)  # assert_close's own for float32 on the CPU
    for name in runs[False].params:
        torch.testing.assert_close(runs[True].params[name], runs[False].params[name], **close)
    torch.testing.assert_close(runs[True].history, runs[False].history, **close)
    assert all(group.sampler.max_rows for group in runs[True].gradients.groups)
