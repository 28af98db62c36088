"""identity: tied weights, out = ReLU(Wᵀ W x + b); magnitudes uniform in [0, 1], target x.

Representational superposition (the paper's first half). With model.hidden_relu=true a ReLU acts
on the hidden layer, out = ReLU(Wᵀ ReLU(W x) + b): the course's "superposition in a privileged
basis".
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
    return {"W": Param((h, f), "xavier_normal", stream=0), "b_final": Param((f,))}


def forward(params: dict[str, Tensor], x: Tensor, shape: Shape) -> Tensor:
    W = params["W"]
    hidden = einsum(x, W, "inst batch feat, inst hid feat -> inst batch hid")
    if shape.hidden_relu:
        hidden = torch.relu(hidden)
    out = einsum(hidden, W, "inst batch hid, inst hid feat -> inst batch feat")
    return torch.relu(out + params["b_final"].unsqueeze(1))


def baselines(importance: Sequence[float], p: float, d_hidden: int) -> dict[str, float]:
    """constant: W = 0 and every output the bias E[x_i] = p / 2, p/3 - p²/4 per feature.
    dedicated: W's rows the unit vectors of the d_hidden most important features (each
    represented exactly, bias 0), the other outputs the constant p / 2 (their bias). Both hold
    with or without the hidden ReLU (x >= 0)."""
    return {
        "constant": constant_output_loss(importance, p),
        "dedicated": constant_output_loss(importance, p, exact=d_hidden),
    }


def closed_forms(importance: Sequence[float], p: float, shape: Shape) -> dict[str, float] | None:
    """The three configurations of the 2 -> 1 model (the phase diagram, Wattenberg's analysis),
    biases 0, importances (a, b) of feature 0 and the extra feature 1; None for other shapes.

    - drop (W = [1, 0]): feature 0 exact, out_1 = 0: b · E[x_1²] / 2 = b p / 6;
    - dedicate (W = [0, 1]): a p / 6;
    - antipodal (W = [1, -1]): out = (ReLU(x0 - x1), ReLU(x1 - x0)), exact when at most one
      feature is active; when both are (p²) each output is off by min(x0, x1), and
      E[min(U, V)²] = 1/6 for U, V uniform on [0, 1]: p² (a + b) / 12.
    """
    if (shape.n_features, shape.d_hidden, shape.hidden_relu) != (2, 1, False):
        return None
    a, b = importance
    return {"drop": b * p / 6, "dedicate": a * p / 6, "antipodal": p**2 * (a + b) / 12}


IDENTITY = register(
    Task(
        name="identity",
        summary="tied weights, out = ReLU(WᵀWx + b), magnitudes in [0, 1], target x",
        params=params,
        forward=forward,
        target=lambda x: x,
        magnitudes=(0.0, 1.0),
        feature_weights="W",
        default_init="per_instance",
        privileged_basis=lambda shape: shape.hidden_relu,
        hidden_relu_option=True,
        figures=(
            "features_2d",
            "wtw",
            "neurons",
            "dimensionality",
            "feature_loss",
            "loss",
            "restarts",
        ),
        metrics=("neurons",),
        fast_path=lambda shape: EncoderDecoder(
            tied=True, hidden_relu=shape.hidden_relu, abs_target=False
        ),
        baselines=baselines,
        closed_forms=closed_forms,
    )
)
