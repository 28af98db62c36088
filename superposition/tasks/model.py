"""The toy models, every parameter stacked with the instance axis first.

Activations are (instance, batch, feature) throughout the package, so the matrix products are
batched over instances without a transpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from einops import einsum
from torch import Tensor

from superposition import rng
from superposition.config import InitScheme, Task

INIT_STREAM = 3


@dataclass(frozen=True)
class ModelSpec:
    task: Task
    n_features: int
    d_hidden: int
    hidden_relu: bool = False
    init: InitScheme = InitScheme.auto

    @property
    def init_scheme(self) -> InitScheme:
        """The scheme `auto` stands for: course for abs, per_instance for identity."""
        if self.init != InitScheme.auto:
            return self.init
        return InitScheme.course if self.task == Task.abs else InitScheme.per_instance

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one instance's parameters, by name (the names used in weights.safetensors)."""
        f, h = self.n_features, self.d_hidden
        if self.task == Task.identity:
            return {"W": (h, f), "b_final": (f,)}
        return {"W1": (h, f), "W2": (f, h), "b_final": (f,)}


@dataclass(frozen=True)
class InitScale:
    """How one weight matrix starts: normal with std `scale`, or uniform in ±`scale`."""

    distribution: str  # "normal" or "uniform"
    scale: float


def init_scales(spec: ModelSpec) -> dict[str, InitScale]:
    """The initial distribution of every weight matrix (biases start at zero).

    The course initialises its stacked (instance, rows, cols) tensors with torch's initialisers,
    which read the fan-in as rows · cols = d_hidden · n_features:
    - course: abs W1 and W2 Kaiming-uniform, bound sqrt(6 / (d_hidden · n_features)), as in the
      course; identity W Xavier-normal with both fans d_hidden · n_features, std
      sqrt(1 / (d_hidden · n_features)) (the course's fan-out also counts its instances, which
      would make an instance's start depend on how many there are).
    - per_instance: each matrix's own fans; abs bound sqrt(6 / fan_in) (n_features for W1,
      d_hidden for W2), identity std sqrt(2 / (d_hidden + n_features)).
    """
    f, h = spec.n_features, spec.d_hidden
    course = spec.init_scheme == InitScheme.course
    if spec.task == Task.identity:
        std = math.sqrt(1.0 / (h * f)) if course else math.sqrt(2.0 / (h + f))
        return {"W": InitScale("normal", std)}
    if course:
        bound = math.sqrt(6.0 / (h * f))
        return {"W1": InitScale("uniform", bound), "W2": InitScale("uniform", bound)}
    return {
        "W1": InitScale("uniform", math.sqrt(6.0 / f)),
        "W2": InitScale("uniform", math.sqrt(6.0 / h)),
    }


def _init_uniform(
    seed: int, name_index: int, instances: Annotated[Tensor, "instance"], rows: int, cols: int
) -> Annotated[Tensor, "instance rows cols"]:
    keys = rng.instance_keys(seed, INIT_STREAM * 1000 + name_index, instances)
    return rng.UniformStream(keys, rows, cols).block(0)


# each parameter's random stream (name_index of _init_uniform), fixed so that results stay put
_INIT_STREAMS = {"W": 0, "W1": 1, "W2": 2}


def init_params(
    spec: ModelSpec, seed: int, instances: Annotated[Tensor, "instance"]
) -> dict[str, Tensor]:
    """Initial parameters of the given (global) instances, drawn as init_scales says.

    Each instance draws from its own stream (see rng.py), so its start does not depend on the
    other instances; biases start at zero.
    """
    shapes = spec.param_shapes()
    params = {}
    for name, init in init_scales(spec).items():
        u = _init_uniform(seed, _INIT_STREAMS[name], instances, *shapes[name])
        if init.distribution == "normal":
            params[name] = init.scale * math.sqrt(2.0) * torch.erfinv(2 * u - 1)
        else:
            params[name] = init.scale * (2 * u - 1)
    params["b_final"] = torch.zeros(instances.shape[0], spec.n_features, device=instances.device)
    return params


def forward(
    spec: ModelSpec, params: dict[str, Tensor], x: Annotated[Tensor, "instance batch feature"]
) -> Annotated[Tensor, "instance batch feature"]:
    b_final = params["b_final"].unsqueeze(1)
    if spec.task == Task.identity:
        W = params["W"]
        hidden = einsum(x, W, "inst batch feat, inst hid feat -> inst batch hid")
        if spec.hidden_relu:
            hidden = torch.relu(hidden)
        out = einsum(hidden, W, "inst batch hid, inst hid feat -> inst batch feat")
    else:
        hidden = torch.relu(
            einsum(x, params["W1"], "inst batch feat, inst hid feat -> inst batch hid")
        )
        out = einsum(hidden, params["W2"], "inst batch hid, inst feat hid -> inst batch feat")
    return torch.relu(out + b_final)


def target_of(spec: ModelSpec, x: Annotated[Tensor, "instance batch feature"]) -> Tensor:
    return x.abs() if spec.task == Task.abs else x


def loss_per_instance(
    out: Annotated[Tensor, "instance batch feature"],
    target: Annotated[Tensor, "instance batch feature"],
    importance: Annotated[Tensor, "instance feature"],
) -> Annotated[Tensor, "instance"]:
    """Mean over batch and features of importance_i * (target_i - out_i)**2."""
    return (importance.unsqueeze(1) * (target - out).pow(2)).mean(dim=(1, 2))
