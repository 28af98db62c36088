"""The counter-based random numbers and the batch sampler."""

import math

import pytest
import torch
from conftest import same_on_the_cpu
from features import distribution

from superposition import rng
from superposition.tasks.sampling import BatchSampler, features_from_uniform


def test_tensor_hash_matches_the_python_reference(device):
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF, 987654321]
    signed = [v - 2**32 if v >= 2**31 else v for v in values]
    as_int32 = torch.tensor(signed, dtype=torch.int32, device=device)
    hashed = rng.hash32(as_int32).tolist()
    assert [h & 0xFFFFFFFF for h in hashed] == [rng.hash32_int(v) for v in values]


def test_in_place_hash_equals_the_hash(device):
    x = torch.randint(-(2**31), 2**31 - 1, (3, 1000), dtype=torch.int32)
    expected = rng.hash32(x)  # on the CPU
    on_device = x.to(device)
    assert torch.equal(rng.hash32_(on_device, torch.empty_like(on_device)).cpu(), expected)


def test_hash_is_a_bijection_on_a_block():
    x = torch.arange(-(2**20), 2**20, dtype=torch.int32)
    assert torch.unique(rng.hash32(x)).numel() == x.numel()


def test_uniforms_lie_in_the_open_interval_with_uniform_moments(device):
    def block(on: torch.device, step: int = 7) -> torch.Tensor:
        keys = rng.instance_keys(0, 1, torch.arange(4, device=on))
        return rng.UniformStream(keys, 4096, 64).block(step)

    u = same_on_the_cpu(device, block)
    assert u.shape == (4, 4096, 64)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 2e-3
    assert abs(u.var().item() - 1 / 12) < 1e-3
    # streams of different instances and steps are uncorrelated
    flat = u.view(4, -1)
    corr = torch.corrcoef(flat)
    assert (corr - torch.eye(4, device=device)).abs().max() < 0.01
    other_step = block(device, step=8).view(4, -1)
    assert abs(torch.corrcoef(torch.stack([flat[0], other_step[0]]))[0, 1]) < 0.01


def test_streams_do_not_depend_on_which_instances_are_drawn_together(device):
    def sampler(instances: list[int], on: torch.device) -> BatchSampler:
        probability = torch.full((len(instances),), 0.5, device=on)
        indices = torch.tensor(instances, device=on)
        return BatchSampler(distribution("identity"), 3, indices, probability, 32, 5)

    everything = sampler(list(range(10)), device)
    some = same_on_the_cpu(device, lambda on: sampler([7, 2], on)(11))
    assert torch.equal(everything(11)[[7, 2]], some)
    assert not torch.equal(everything(11), everything(12))


def test_features_from_uniform_by_hand():
    u = torch.tensor([[[0.05, 0.2, 0.09]]])
    p = torch.tensor([0.1])
    identity = features_from_uniform(u, p, distribution("identity"))
    torch.testing.assert_close(identity, torch.tensor([[[0.5, 0.0, 0.9]]]))
    absolute = features_from_uniform(u, p, distribution("abs"))
    torch.testing.assert_close(absolute, torch.tensor([[[0.0, 0.0, 0.8]]]))


@pytest.mark.parametrize("task", ["identity", "abs"])
def test_sampler_marginals_match_the_course_distribution(task):
    probabilities = torch.tensor([1.0, 0.3, 0.05])
    sampler = BatchSampler(distribution(task), 0, torch.arange(3), probabilities, 1 << 16, 8)
    x = sampler(0)
    active = x != 0
    n = active[0].numel()
    for i, p in enumerate(probabilities.tolist()):
        freq = active[i].float().mean().item()
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-6
        values = x[i][active[i]]
        if task == "identity":
            assert 0 < values.min() and values.max() < 1
            assert abs(values.mean().item() - 0.5) < 0.01
            assert abs(values.var().item() - 1 / 12) < 0.005
        else:
            assert -1 < values.min() and values.max() < 1
            assert abs(values.mean().item()) < 0.01
            assert abs(values.var().item() - 1 / 3) < 0.01
    # features are independent: co-occurrence of two features is p**2
    p = probabilities[1].item()
    both = (active[1, :, 0] & active[1, :, 1]).float().mean().item()
    assert abs(both - p * p) < 4 * math.sqrt(p * p / n)
    # all-zero rows at p = 0.05 and 8 features happen with probability 0.95**8
    empty = (~active[2]).all(dim=1).float().mean().item()
    assert abs(empty - 0.95**8) < 0.01


def test_every_random_stream_has_its_own_id():
    """Two uses of one stream id would draw correlated numbers (the held-out rows once shared
    the sparse training sampler's id); the initial weights take ids from INIT_STREAM · 1000 on."""
    assert len(set(rng.STREAMS)) == len(rng.STREAMS)
    assert max(rng.STREAMS) < rng.INIT_STREAM * 1000
