"""Forward, loss, initialisation and the instance-wise optimiser against hand-computed values."""

import math

import pytest
import torch
from conftest import tolerances

from superposition.config import InitScheme, LRSchedule, Optimizer
from superposition.engine.optim import InstanceAdam, learning_rate
from superposition.tasks.model import (
    ModelSpec,
    forward,
    init_params,
    init_scales,
    loss_per_instance,
    target_of,
)


def test_identity_forward_by_hand(device):
    spec = ModelSpec("identity", n_features=3, d_hidden=2)
    W = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]], device=device)
    b = torch.tensor([[0.0, -0.5, 0.1]], device=device)
    x = torch.tensor([[[1.0, 0.0, 0.5]]], device=device)
    # W x = [1.5, -0.5]; Wᵀ(Wx) = [1.5, -0.5, 2.0]; + b = [1.5, -1.0, 2.1]; ReLU
    out = forward(spec, {"W": W, "b_final": b}, x)
    torch.testing.assert_close(out.cpu(), torch.tensor([[[1.5, 0.0, 2.1]]]))
    relu_spec = ModelSpec("identity", 3, 2, hidden_relu=True)
    # ReLU(Wx) = [1.5, 0]; Wᵀ h = [1.5, 0, 1.5]; + b = [1.5, -0.5, 1.6]
    out = forward(relu_spec, {"W": W, "b_final": b}, x)
    torch.testing.assert_close(out.cpu(), torch.tensor([[[1.5, 0.0, 1.6]]]))


def test_abs_forward_and_target_by_hand():
    spec = ModelSpec("abs", n_features=2, d_hidden=2)
    W1 = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    W2 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    b = torch.zeros(1, 2)
    x = torch.tensor([[[-0.7, 0.3], [0.4, 0.0]]])
    out = forward(spec, {"W1": W1, "W2": W2, "b_final": b}, x)
    # ReLU(x0) + ReLU(-x0) = |x0| computed for feature 0; feature 1 is dropped
    torch.testing.assert_close(out, torch.tensor([[[0.7, 0.0], [0.4, 0.0]]]))
    torch.testing.assert_close(target_of(spec, x), x.abs())


def test_loss_is_importance_weighted_mean_over_batch_and_features():
    out = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    importance = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    # instance 0: (1*1 + 0.5*1 + 0 + 0.5*4) / 4 = 0.875
    torch.testing.assert_close(
        loss_per_instance(out, target, importance), torch.tensor([0.875, 0.0])
    )


def test_initialisation_statistics(device):
    instances = torch.arange(2000, device=device)
    identity = init_params(ModelSpec("identity", 5, 2), 0, instances)  # auto: per_instance
    assert identity["W"].shape == (2000, 2, 5)
    assert abs(identity["W"].std().item() - math.sqrt(2 / 7)) < 0.01
    assert torch.count_nonzero(identity["b_final"]) == 0
    course = init_params(ModelSpec("identity", 5, 2, init=InitScheme.course), 0, instances)
    assert abs(course["W"].std().item() - math.sqrt(1 / 10)) < 0.01
    for init, bound1, bound2 in [
        (InitScheme.auto, math.sqrt(6 / 160), math.sqrt(6 / 160)),  # auto: course for abs
        (InitScheme.per_instance, math.sqrt(6 / 20), math.sqrt(6 / 8)),
    ]:
        absolute = init_params(ModelSpec("abs", 20, 8, init=init), 0, instances[:200])
        assert bound1 >= absolute["W1"].abs().max() > 0.98 * bound1
        assert bound2 >= absolute["W2"].abs().max() > 0.98 * bound2
    # each instance's weights depend only on its own index
    again = init_params(ModelSpec("identity", 5, 2), 0, instances[1234:1235])
    assert torch.equal(again["W"][0], identity["W"][1234])


@pytest.mark.parametrize("n_instances", [1, 7, 28])
def test_course_scale_is_what_torch_reads_from_the_course_stacked_tensors(n_instances):
    """The course calls nn.init.kaiming_uniform_ on (instance, d_hidden, n_features) and
    (instance, n_features, d_hidden) tensors; torch's own bound for them is the course scale,
    whatever the number of instances."""
    spec = ModelSpec("abs", 100, 40, init=InitScheme.course)
    scales = init_scales(spec)
    for name, shape in spec.param_shapes().items():
        if name == "b_final":
            continue
        stacked = torch.empty(n_instances, *shape)
        torch.manual_seed(0)
        torch.nn.init.kaiming_uniform_(stacked)
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(stacked)
        assert scales[name].distribution == "uniform"
        assert scales[name].scale == pytest.approx(math.sqrt(6 / fan_in))
        assert float(stacked.abs().max()) <= scales[name].scale


def test_auto_init_resolves_by_task():
    assert ModelSpec("abs", 4, 2).init_scheme == InitScheme.course
    assert ModelSpec("identity", 4, 2).init_scheme == InitScheme.per_instance
    assert ModelSpec("identity", 4, 2, True).init_scheme == InitScheme.per_instance
    assert ModelSpec("abs", 4, 2, init=InitScheme.per_instance).init_scheme == (
        InitScheme.per_instance
    )


@pytest.mark.parametrize(
    "kind, torch_optimizer",
    [(Optimizer.adam, torch.optim.Adam), (Optimizer.adamw, torch.optim.AdamW)],
)
def test_instance_adam_matches_torch(kind, torch_optimizer, device):
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5).to(device)
    ours = start.clone().requires_grad_(True)
    theirs = start.clone().requires_grad_(True)
    optimizer = InstanceAdam([ours], kind, weight_decay=0.01)
    reference = torch_optimizer([theirs], lr=0.01, weight_decay=0.01)
    finite = torch.ones(3, dtype=torch.bool, device=device)
    for step in range(20):
        target = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(step)).to(device)
        for p in (ours, theirs):
            p.grad = None
            ((p - target) ** 2).sum().backward()
        optimizer.step(0.01, finite)
        reference.step()
    torch.testing.assert_close(ours, theirs, **tolerances(device, 1e-5, 1e-6))


def test_frozen_instance_keeps_its_parameters():
    p = torch.ones(3, 2, requires_grad=True)
    optimizer = InstanceAdam([p])
    p.grad = torch.tensor([[1.0, 1.0], [float("nan"), 1.0], [1.0, 1.0]])
    optimizer.step(0.1, torch.tensor([True, False, True]))
    assert torch.equal(p[1], torch.ones(2))
    assert (p[0] < 1).all() and (p[2] < 1).all()


def test_learning_rate_schedules():
    assert learning_rate(1.0, LRSchedule.constant, 50, 100) == 1.0
    assert learning_rate(1.0, LRSchedule.linear, 25, 100) == 0.75
    assert learning_rate(1.0, LRSchedule.cosine, 0, 100) == 1.0
    assert learning_rate(1.0, LRSchedule.cosine, 50, 100) == pytest.approx(0.5)
