"""abs: out = ReLU(W2 ReLU(W1 x) + b); magnitudes uniform in [-1, 1], target |x|.

Computation in superposition (the paper's second half): |x| = ReLU(x) + ReLU(-x) needs a neuron
for each sign of a feature, so the hidden layer is a privileged basis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import einsum
from torch import Tensor

from superposition.tasks import EncoderDecoder, Param, Shape, Task, register
from superposition.tasks.task import constant_output_loss


def params(shape: Shape) -> dict[str, Param]:
    f, h = shape.n_features, shape.d_hidden
    return {
        "W1": Param((h, f), "kaiming_uniform", stream=1),
        "W2": Param((f, h), "kaiming_uniform", stream=2),
        "b_final": Param((f,)),
    }


def forward(params: dict[str, Tensor], x: Tensor, shape: Shape) -> Tensor:
    hidden = torch.relu(einsum(x, params["W1"], "inst batch feat, inst hid feat -> inst batch hid"))
    out = einsum(hidden, params["W2"], "inst batch hid, inst feat hid -> inst batch feat")
    return torch.relu(out + params["b_final"].unsqueeze(1))


def constant_loss(importance: Sequence[float], p: float) -> float:
    """Loss of the best model that computes nothing (weights 0): every output the constant
    E|x_i| = p / 2, which costs E[(|x_i| - p/2)²] = p/3 - p²/4 per feature (|x_i| uniform on
    [0, 1] when active)."""
    return constant_output_loss(importance, p)


def dedicated_loss(importance: Sequence[float], p: float, d_hidden: int) -> float:
    """Loss without superposition: the d_hidden // 2 most important features computed exactly,
    each by one ReLU(x) and one ReLU(-x) neuron read back with weight 1 (|x| = ReLU(x) +
    ReLU(-x)), the rest left to the constant p / 2 (their bias)."""
    return constant_output_loss(importance, p, exact=d_hidden // 2)


def baselines(importance: Sequence[float], p: float, d_hidden: int) -> dict[str, float]:
    return {
        "constant": constant_loss(importance, p),
        "dedicated": dedicated_loss(importance, p, d_hidden),
    }


ABS = register(
    Task(
        name="abs",
        summary="out = ReLU(W2 ReLU(W1 x) + b), magnitudes in [-1, 1], target |x|",
        params=params,
        forward=forward,
        target=torch.abs,
        magnitudes=(-1.0, 1.0),
        feature_weights="W1",
        decoder_weights="W2",
        # the course's stacked tensors read the fan-in as d_hidden · n_features (README)
        default_init="course",
        privileged_basis=lambda shape: True,
        figures=(
            "features_2d",
            "wtw",
            "neurons",
            "dimensionality",
            "feature_loss",
            "loss",
            "restarts",
        ),
        metrics=("neurons", "signs"),
        fast_path=lambda shape: EncoderDecoder(tied=False, hidden_relu=True, abs_target=True),
        baselines=baselines,
    )
)
