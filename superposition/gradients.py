"""Loss and parameter gradients of one batch, written out by hand.

Autograd records every operation and allocates every intermediate; the toy models are small enough
that this bookkeeping costs more than the arithmetic. Here the forward and backward passes are a
fixed list of batched matrix products and in-place element-wise operations on buffers that live as
long as the chunk. Both models are written as one encoder-decoder:

    pre = x W1ᵀ,  hidden = ReLU(pre) (abs, or identity with hidden_relu) else pre,
    out = ReLU(hidden W2ᵀ + b)

with W1 = W and W2 = Wᵀ for the tied identity model. With g = ∂L/∂(hidden W2ᵀ + b):
g = 2 I (out − target) [out > 0] / (batch · features), ∂b = Σ_rows g, ∂W2 = gᵀ hidden,
∂hidden = g W2, ∂pre = ∂hidden [pre > 0] (with a hidden ReLU), ∂W1 = ∂preᵀ x, and ∂W = ∂W1 + ∂W2ᵀ.

A batch packs its rows with an active feature and counts the all-zero rows it left out (see
batches.py). An all-zero row has out = ReLU(b) and target 0: it adds I ReLU(b)² to the loss and
2 I ReLU(b) / (batch · features) to ∂b, per row, so those rows cost nothing.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition.batches import Batch
from superposition.config import Task
from superposition.model import ModelSpec


class Workspace:
    """Buffers of one group of instances for batches of up to `rows` rows, reused every step."""

    def __init__(self, spec: ModelSpec, n_instances: int, rows: int, device: torch.device):
        f, h = spec.n_features, spec.d_hidden
        self.n_instances, self.n_features, self.d_hidden = n_instances, f, h
        self.by_feature = torch.empty(2, n_instances * rows * f, device=device)
        self.by_hidden = torch.empty(2, n_instances * rows * h, device=device)

    def views(self, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(out, scratch, hidden, d_hidden), contiguous, for a batch of `rows` rows."""
        n, f, h = self.n_instances, self.n_features, self.d_hidden
        out, scratch = (buffer[: n * rows * f].view(n, rows, f) for buffer in self.by_feature)
        hidden, d_hidden = (buffer[: n * rows * h].view(n, rows, h) for buffer in self.by_hidden)
        return out, scratch, hidden, d_hidden


def _relu_backward_(grad: Tensor, pre_activation: Tensor) -> Tensor:
    """grad[pre_activation <= 0] = 0, in place."""
    return torch.ops.aten.threshold_backward.grad_input(grad, pre_activation, 0, grad_input=grad)


def has_hidden_relu(spec: ModelSpec) -> bool:
    return spec.task == Task.abs or spec.hidden_relu


def _decoder(spec: ModelSpec, params: dict[str, Tensor]) -> Annotated[Tensor, "instance hid feat"]:
    return params["W"] if spec.task == Task.identity else params["W2"].transpose(1, 2)


def _encoder(spec: ModelSpec, params: dict[str, Tensor]) -> Annotated[Tensor, "instance hid feat"]:
    return params["W"] if spec.task == Task.identity else params["W1"]


def loss_and_gradients(
    spec: ModelSpec,
    params: dict[str, Tensor],
    batch: Batch,
    importance: Annotated[Tensor, "instance feature"],
    grads: dict[str, Tensor],
    work: Workspace,
    want_loss: bool,
) -> Annotated[Tensor, "instance"] | None:
    """Write every parameter's gradient of the summed instance losses into `grads`; return the
    loss per instance when want_loss (it takes extra passes, so the trainer asks at log steps)."""
    x, zero_rows = batch.x, batch.zero_rows
    n_rows_total = x.shape[1] + zero_rows
    encoder, decoder, b = _encoder(spec, params), _decoder(spec, params), params["b_final"]
    out, scratch, hidden, d_hidden = work.views(x.shape[1])

    torch.bmm(x, encoder.transpose(1, 2), out=hidden)
    if has_hidden_relu(spec):
        hidden.clamp_(min=0)
    torch.baddbmm(b.unsqueeze(1), hidden, decoder, out=out)  # before the output ReLU

    # g = (out - x) [out > 0] · 2 I / (rows · features), with out - x = pre-activation - x where
    # it counts; threshold_backward is ReLU's own backward: one pass for the mask
    scale = importance.unsqueeze(1) * (2.0 / (n_rows_total * spec.n_features))
    target = x
    if spec.task == Task.abs:
        target = torch.abs(x, out=scratch)
    g = torch.sub(out, target, out=scratch)
    _relu_backward_(g, out)
    g.mul_(scale)

    relu_b = b.clamp(min=0)
    loss = None
    if want_loss:
        residual = out.clamp_(min=0).sub_(x.abs() if spec.task == Task.abs else x)
        per_feature = residual.square_().sum(dim=1) + zero_rows * relu_b.square()
        loss = (per_feature * importance).sum(dim=1) / (n_rows_total * spec.n_features)

    torch.sum(g, dim=1, out=grads["b_final"])
    if zero_rows:
        grads["b_final"].add_(relu_b * scale.squeeze(1), alpha=zero_rows)

    torch.bmm(g, decoder.transpose(1, 2), out=d_hidden)
    if has_hidden_relu(spec):
        _relu_backward_(d_hidden, hidden)
    if spec.task == Task.identity:
        torch.bmm(hidden.transpose(1, 2), g, out=grads["W"])
        grads["W"].baddbmm_(d_hidden.transpose(1, 2), x)
    else:
        torch.bmm(g.transpose(1, 2), hidden, out=grads["W2"])
        torch.bmm(d_hidden.transpose(1, 2), x, out=grads["W1"])
    return loss
