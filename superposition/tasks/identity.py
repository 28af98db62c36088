"""identity: tied weights, out = ReLU(Wᵀ W x + b); magnitudes uniform in [0, 1], target x.

Representational superposition (the paper's first half). With model.hidden_relu=true a ReLU acts
on the hidden layer, out = ReLU(Wᵀ ReLU(W x) + b): the course's "superposition in a privileged
basis".
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

from superposition.tasks import EncoderDecoder, Param, Shape, Task, register


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
    )
)
