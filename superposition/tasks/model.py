"""A task's model at a given size: parameters stacked with the instance axis first, their
initial values, the reference forward and the loss.

Activations are (instance, batch, feature) throughout the package, so the matrix products are
batched over instances without a transpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from superposition import rng, tasks
from superposition.config import InitScheme
from superposition.tasks.task import Shape, Task


@dataclass(frozen=True)
class ModelSpec:
    task: str  # a registered task's name
    n_features: int
    d_hidden: int
    hidden_relu: bool = False
    init: InitScheme = InitScheme.auto

    @property
    def definition(self) -> Task:
        return tasks.get(self.task)

    @property
    def shape(self) -> Shape:
        return Shape(self.n_features, self.d_hidden, self.hidden_relu)

    @property
    def init_scheme(self) -> InitScheme:
        """The scheme `auto` stands for: the task's default (course for abs, per_instance for
        identity)."""
        if self.init != InitScheme.auto:
            return self.init
        return InitScheme(self.definition.default_init)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one instance's parameters, by name (the names used in weights.safetensors)."""
        return {name: p.shape for name, p in self.definition.params(self.shape).items()}


@dataclass(frozen=True)
class InitScale:
    """How one weight matrix starts: normal with std `scale`, or uniform in ±`scale`."""

    distribution: str  # "normal" or "uniform"
    scale: float


def init_scales(spec: ModelSpec) -> dict[str, InitScale]:
    """The initial distribution of every weight matrix (parameters with init zeros start at 0).

    The course initialises its stacked (instance, rows, cols) tensors with torch's initialisers,
    which read the fan-in as rows · cols = d_hidden · n_features:
    - course: fan-in and fan-out rows · cols: abs W1 and W2 Kaiming-uniform, bound
      sqrt(6 / (d_hidden · n_features)), as in the course; identity W Xavier-normal, std
      sqrt(1 / (d_hidden · n_features)) (the course's fan-out also counts its instances, which
      would make an instance's start depend on how many there are).
    - per_instance: each matrix's own fans, fan-in cols and fan-out rows; abs bound
      sqrt(6 / fan_in) (n_features for W1, d_hidden for W2), identity std
      sqrt(2 / (d_hidden + n_features)).
    """
    course = spec.init_scheme == InitScheme.course
    scales = {}
    for name, param in spec.definition.params(spec.shape).items():
        if param.init == "zeros":
            continue
        rows, cols = param.shape
        fan_in, fan_out = (rows * cols, rows * cols) if course else (cols, rows)
        if param.init == "kaiming_uniform":
            scales[name] = InitScale("uniform", math.sqrt(6.0 / fan_in))
        else:
            scales[name] = InitScale("normal", math.sqrt(2.0 / (fan_in + fan_out)))
    return scales


def _init_uniform(
    seed: int, stream: int, instances: Annotated[Tensor, "instance"], rows: int, cols: int
) -> Annotated[Tensor, "instance rows cols"]:
    keys = rng.instance_keys(seed, rng.INIT_STREAM * 1000 + stream, instances)
    return rng.UniformStream(keys, rows, cols).block(0)


def init_params(
    spec: ModelSpec, seed: int, instances: Annotated[Tensor, "instance"]
) -> dict[str, Tensor]:
    """Initial parameters of the given (global) instances, drawn as init_scales says.

    Each instance draws from its own stream (see rng.py), so its start does not depend on the
    other instances.
    """
    scales = init_scales(spec)
    params = {}
    for name, param in spec.definition.params(spec.shape).items():
        if name not in scales:
            params[name] = torch.zeros(instances.shape[0], *param.shape, device=instances.device)
            continue
        u = _init_uniform(seed, param.stream_of(name), instances, *param.shape)
        init = scales[name]
        if init.distribution == "normal":
            params[name] = init.scale * math.sqrt(2.0) * torch.erfinv(2 * u - 1)
        else:
            params[name] = init.scale * (2 * u - 1)
    return params


def forward(
    spec: ModelSpec, params: dict[str, Tensor], x: Annotated[Tensor, "instance batch feature"]
) -> Annotated[Tensor, "instance batch feature"]:
    """The task's reference forward."""
    return spec.definition.forward(params, x, spec.shape)


def target_of(spec: ModelSpec, x: Annotated[Tensor, "instance batch feature"]) -> Tensor:
    return spec.definition.target(x)


def loss_per_instance(
    out: Annotated[Tensor, "instance batch feature"],
    target: Annotated[Tensor, "instance batch feature"],
    importance: Annotated[Tensor, "instance feature"],
) -> Annotated[Tensor, "instance"]:
    """Mean over batch and features of importance_i * (target_i - out_i)**2."""
    return (importance.unsqueeze(1) * (target - out).pow(2)).mean(dim=(1, 2))
