"""The autograd engine's step: the task's reference forward and torch.autograd, for any task.

It draws the same packed batches as the fast engine (always as dense blocks) and computes the
same loss: the mean over every row of the batch, where the all-zero rows the batch left out
count through one forward of a zero row (they all give the same output).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition.engine.batches import Batch, Group
from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of

BYTES_PER_FLOAT = 4
# activations autograd keeps per row and instance (x, the task's intermediates and their
# gradients, the output, the target and the squared error): an upper estimate for the built-in
# models; a task of many more intermediates may need train.memory_budget_mb set lower
ACTIVATIONS_PER_FEATURE = 10
ACTIVATIONS_PER_HIDDEN = 6
COPIES_PER_PARAMETER = 6


def batch_loss(
    spec: ModelSpec,
    params: dict[str, Tensor],
    batch: Batch,
    importance: Annotated[Tensor, "instance feature"],
) -> Annotated[Tensor, "instance"]:
    """Mean over the batch's rows (packed and left-out zero rows) and features of
    importance_i (target_i − out_i)²."""
    x = batch.x
    packed = loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
    total_rows = batch.n_rows + batch.zero_rows
    if not batch.zero_rows:
        return packed
    zero = x.new_zeros(x.shape[0], 1, x.shape[2])
    at_zero = loss_per_instance(forward(spec, params, zero), target_of(spec, zero), importance)
    return (packed * batch.n_rows + at_zero * batch.zero_rows) / total_rows


class AutogradGradients:
    """Writes the gradients of one step into `grads`, by autograd through the task's forward."""

    # the task's forward takes a dense block
    dense_blocks = True

    def __init__(
        self,
        spec: ModelSpec,
        groups: list[Group],
        params: dict[str, Tensor],
        grads: dict[str, Tensor],
    ):
        self.spec, self.groups, self.params, self.grads = spec, groups, params, grads

    def __call__(self, step: int, want_loss: bool) -> Annotated[Tensor, "instance"] | None:
        """The gradients of step `step`; the loss per instance when want_loss."""
        leaves = {name: value.detach().requires_grad_() for name, value in self.params.items()}
        with torch.enable_grad():
            losses = [
                batch_loss(
                    self.spec,
                    {name: leaf[group.part] for name, leaf in leaves.items()},
                    group.sampler(step),
                    group.importance,
                )
                for group in self.groups
            ]
            loss = torch.cat(losses)
            # instances are independent: the gradient of the sum is each instance's own
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
        for name, grad in zip(leaves, grads, strict=True):
            if grad is None:
                self.grads[name].zero_()
            else:
                self.grads[name].copy_(grad)
        return loss.detach() if want_loss else None

    def finite(self) -> Annotated[Tensor, "instance"]:
        """Instances whose every gradient is finite."""
        finite = None
        for grad in self.grads.values():
            ok = torch.isfinite(grad).flatten(1).all(dim=1)
            finite = ok if finite is None else finite & ok
        return finite


def bytes_per_instance(
    spec: ModelSpec, batch_rows: int, probabilities: list[float] | None = None
) -> int:
    """Peak memory one instance adds to an autograd training step (an upper estimate: a dense
    batch; sparse levels need less)."""
    n_params = sum(torch.Size(shape).numel() for shape in spec.param_shapes().values())
    activations = batch_rows * (
        ACTIVATIONS_PER_FEATURE * spec.n_features + ACTIVATIONS_PER_HIDDEN * spec.d_hidden
    )
    return BYTES_PER_FLOAT * (activations + COPIES_PER_PARAMETER * n_params)
