"""The expected loss of rows with no active feature and with exactly one, in closed form, and
the loss of a one-feature row at a given value (the control variate of analysis/evaluate.py).

With one active feature j of value v, the model's output before its ReLU is linear in v on each
side of 0 (the encoder, the hidden ReLU and the decoder are positively homogeneous), so the
squared error of each output is a quadratic in v between the points where the output's ReLU
switches. Its integral over the uniform magnitude is written out piece by piece: exact, no
quadrature. This needs the model as an EncoderDecoder (the fast engine's family); analysis/
evaluate.py samples everything for a task without one.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of
from superposition.tasks.task import EncoderDecoder


def no_active_loss(
    spec: ModelSpec, params: dict[str, Tensor], importance: Annotated[Tensor, "instance feature"]
) -> Annotated[Tensor, "instance"]:
    """The loss of the row x = 0 (any task: one forward)."""
    n = importance.shape[0]
    x = torch.zeros(n, 1, spec.n_features, device=importance.device)
    return loss_per_instance(forward(spec, params, x), target_of(spec, x), importance).double()


def one_active_loss(
    model: EncoderDecoder,
    params: dict[str, Tensor],
    importance: Annotated[Tensor, "instance feature"],
    magnitudes: tuple[float, float],
) -> Annotated[Tensor, "instance"]:
    """E[loss | exactly one feature active], the active feature uniform over the features and
    its value uniform in (low, high]: the mean of one_active_losses over the features."""
    return one_active_losses(model, params, importance, magnitudes).mean(dim=1)


def one_active_losses(
    model: EncoderDecoder,
    params: dict[str, Tensor],
    importance: Annotated[Tensor, "instance feature"],
    magnitudes: tuple[float, float],
) -> Annotated[Tensor, "instance feature"]:
    """E[loss | only feature j active] for every j, its value uniform in (low, high]:
    (1 / F) Σ_i I_i E_v[(target_i − out_i)²], float64."""
    params = {name: value.double() for name, value in params.items()}
    bias = params["b_final"].unsqueeze(1)  # (instance, 1, output feature)
    n, _, f = bias.shape
    low, high = magnitudes
    eye = torch.eye(f, dtype=torch.float64, device=bias.device).expand(n, f, f)
    total = torch.zeros(n, f, dtype=torch.float64, device=bias.device)
    for sign, t0, t1 in _sides(magnitudes):
        slope = _slopes(model, params, sign, eye)
        target_slope = eye if model.abs_target else sign * eye
        error = squared_error_integral(slope, bias, target_slope, t0, t1)
        total += (importance.double().unsqueeze(1) * error).sum(dim=2)
    return total / (f * (high - low))


class SingleActiveLoss:
    """The loss of a row whose only active feature is j, at value v (nonzero): the integrand of
    one_active_losses at one point, for many rows at once."""

    def __init__(
        self,
        model: EncoderDecoder,
        params: dict[str, Tensor],
        importance: Annotated[Tensor, "instance feature"],
    ):
        self.bias = params["b_final"].unsqueeze(1)
        n, _, f = self.bias.shape
        eye = torch.eye(f, dtype=self.bias.dtype, device=self.bias.device).expand(n, f, f)
        # rows j: the slopes for v > 0; rows F + j: for v < 0
        self.slopes = torch.cat([_slopes(model, params, sign, eye) for sign in (1.0, -1.0)], 1)
        self.importance, self.abs_target, self.n_features = importance, model.abs_target, f

    def __call__(
        self, feature: Annotated[Tensor, "instance row"], value: Annotated[Tensor, "instance row"]
    ) -> Annotated[Tensor, "instance row"]:
        f = self.n_features
        row = torch.where(value > 0, feature, feature + f).unsqueeze(-1).expand(-1, -1, f)
        out = self.slopes.gather(1, row).mul_(value.abs().unsqueeze(-1)).add_(self.bias).relu_()
        # every output's target is 0 but feature j's: sum I_i out_i², then correct term j
        at_j = out.gather(-1, feature.unsqueeze(-1)).squeeze(-1)
        squares = out.pow_(2) @ self.importance.unsqueeze(-1)
        own = value.abs() if self.abs_target else value
        weight = self.importance.gather(1, feature)
        correction = weight * ((own - at_j).pow(2) - at_j.pow(2))
        return (squares.squeeze(-1) + correction) / f


def _sides(magnitudes: tuple[float, float]) -> list[tuple[float, float, float]]:
    """(sign, t0, t1): the values v = sign · t, t in [t0, t1], positive then negative, of the
    magnitude range (low, high] (a side it does not reach left out)."""
    low, high = magnitudes
    sides = [(1.0, max(low, 0.0), max(high, 0.0)), (-1.0, max(-high, 0.0), -low)]
    return [(sign, t0, t1) for sign, t0, t1 in sides if t1 > t0]


def _slopes(
    model: EncoderDecoder, params: dict[str, Tensor], sign: float, eye: Tensor
) -> Annotated[Tensor, "instance feature output"]:
    """d pre-activation_i / dt at x = sign · t · e_j, t > 0 (constant in t: the encoder and the
    hidden ReLU are positively homogeneous)."""
    return model.preactivation(params, sign * eye) - params["b_final"].unsqueeze(1)


def squared_error_integral(a: Tensor, b: Tensor, c: Tensor, t0: float, t1: float) -> Tensor:
    """∫ from t0 to t1 of (c·t − ReLU(a·t + b))² dt, elementwise, exactly: the ReLU is active on
    one side of t = −b / a, and the integrand a quadratic on each part."""
    flat = a == 0
    # a = 0: active everywhere when b > 0, nowhere otherwise (as a > 0 with the cut at ∓inf)
    cut = torch.where(
        flat,
        torch.where(b > 0, -torch.inf, torch.inf).to(a.dtype),
        -b / torch.where(flat, 1.0, a),
    ).clamp(t0, t1)
    falling = a < 0
    active_from = torch.where(falling, t0, cut)
    active_to = torch.where(falling, cut, t1)
    inactive_from = torch.where(falling, cut, t0)
    inactive_to = torch.where(falling, t1, cut)
    active = _square_integral(c - a, -b, active_from, active_to)
    inactive = _square_integral(c, torch.zeros_like(b), inactive_from, inactive_to)
    return active + inactive


def _square_integral(alpha: Tensor, beta: Tensor, u0: Tensor, u1: Tensor) -> Tensor:
    """∫ from u0 to u1 of (alpha·t + beta)² dt."""
    return (
        alpha.pow(2) * (u1.pow(3) - u0.pow(3)) / 3
        + alpha * beta * (u1.pow(2) - u0.pow(2))
        + beta.pow(2) * (u1 - u0)
    )
