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
from superposition.config import Task

INIT_STREAM = 3


@dataclass(frozen=True)
class ModelSpec:
    task: Task
    n_features: int
    d_hidden: int
    hidden_relu: bool = False

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one instance's parameters, by name (the names used in weights.safetensors)."""
        f, h = self.n_features, self.d_hidden
        if self.task == Task.identity:
            return {"W": (h, f), "b_final": (f,)}
        return {"W1": (h, f), "W2": (f, h), "b_final": (f,)}


def _init_uniform(
    seed: int, name_index: int, instances: Annotated[Tensor, "instance"], rows: int, cols: int
) -> Annotated[Tensor, "instance rows cols"]:
    keys = rng.instance_keys(seed, INIT_STREAM * 1000 + name_index, instances)
    return rng.UniformStream(keys, rows, cols).block(0)


def init_params(
    spec: ModelSpec, seed: int, instances: Annotated[Tensor, "instance"]
) -> dict[str, Tensor]:
    """Initial parameters of the given (global) instances, as the course initialises them.

    identity: W Xavier-normal, std sqrt(2 / (d_hidden + n_features)).
    abs: W1 and W2 Kaiming-uniform (ReLU gain), bound sqrt(6 / fan_in) with fan_in the input size.
    Biases start at zero. Each instance draws from its own stream (see rng.py).
    """
    f, h = spec.n_features, spec.d_hidden
    n = instances.shape[0]
    device = instances.device
    if spec.task == Task.identity:
        u = _init_uniform(seed, 0, instances, h, f)
        std = math.sqrt(2.0 / (h + f))
        params = {"W": std * math.sqrt(2.0) * torch.erfinv(2 * u - 1)}
    else:
        params = {
            "W1": math.sqrt(6.0 / f) * (2 * _init_uniform(seed, 1, instances, h, f) - 1),
            "W2": math.sqrt(6.0 / h) * (2 * _init_uniform(seed, 2, instances, f, h) - 1),
        }
    params["b_final"] = torch.zeros(n, f, device=device)
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
