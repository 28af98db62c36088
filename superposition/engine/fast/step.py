"""The fast engine's step: each group's packed batch through the hand-written gradients."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition.engine.batches import Group, is_sparse, sparse_capacities
from superposition.engine.fast.gradients import FastModel, Workspace, gram_pays, loss_and_gradients
from superposition.tasks.model import ModelSpec

BYTES_PER_FLOAT = 4
# Buffers of batch size per instance that a training step keeps (engine/batches.py,
# gradients.py): the dense sampler's bits and scratch and its block x, the output and its scratch,
# one for abs's target at log steps; hidden and its gradient. Sparse batches need fewer.
ACTIVATIONS_PER_FEATURE = 6
ACTIVATIONS_PER_HIDDEN = 2
# A sparse batch: its packed block, the output and its scratch; and the integer and float
# temporaries of drawing one entry slot (SparseDraws and SparseSampler), measured.
PACKED_PER_FEATURE = 3
BYTES_PER_SLOT = 256
# parameter, gradient, two Adam moments, the copy that restores frozen instances, one spare
COPIES_PER_PARAMETER = 6


class FastGradients:
    """Writes the gradients of one step into `grads` (hand-written, gradients.py)."""

    # batches as the samplers find best: entry lists where they pay
    dense_blocks = False

    def __init__(
        self,
        spec: ModelSpec,
        groups: list[Group],
        params: dict[str, Tensor],
        grads: dict[str, Tensor],
    ):
        model = FastModel.of(spec)
        for group in groups:
            size = group.part.stop - group.part.start
            group.work = Workspace(model, size, group.sampler.max_rows, grads["b_final"].device)
        self.model, self.groups, self.grads = model, groups, grads

    def __call__(self, step: int, want_loss: bool) -> Annotated[Tensor, "instance"] | None:
        """The gradients of step `step`; the loss per instance when want_loss."""
        losses = [
            loss_and_gradients(
                self.model,
                group.params,
                group.sampler(step),
                group.importance,
                group.grads,
                group.work,
                want_loss=want_loss,
            )
            for group in self.groups
        ]
        return torch.cat(losses) if want_loss else None

    def finite(self) -> Annotated[Tensor, "instance"]:
        """Instances whose gradient is finite: ∂b sums g over the batch, and any non-finite value
        upstream reaches g, so checking ∂b catches a non-finite gradient of any parameter."""
        return torch.isfinite(self.grads["b_final"]).all(dim=1)


def bytes_per_instance(
    spec: ModelSpec, batch_rows: int, probabilities: list[float] | None = None
) -> int:
    """Peak memory one instance adds to a fast training step (an upper estimate): the worst of a
    dense batch and the sparse batches of the given feature probabilities (a level may be dense
    after all, e.g. with correlated pairs)."""
    model = FastModel.of(spec)
    n_params = sum(torch.Size(shape).numel() for shape in spec.param_shapes().values())
    gram = 2 * spec.n_features**2 if gram_pays(model) else 0  # G = WᵀW and its gradient
    dense = batch_rows * (
        ACTIVATIONS_PER_FEATURE * spec.n_features + ACTIVATIONS_PER_HIDDEN * spec.d_hidden
    )
    batch_floats = [dense]
    for p in probabilities or []:
        if is_sparse(p, spec.n_features):
            slots, rows = sparse_capacities(p, batch_rows, spec.n_features)
            packed = rows * (
                PACKED_PER_FEATURE * spec.n_features + ACTIVATIONS_PER_HIDDEN * spec.d_hidden
            )
            batch_floats.append(packed + (slots + 1) * BYTES_PER_SLOT // BYTES_PER_FLOAT)
    worst = max(batch_floats) if probabilities else dense
    return BYTES_PER_FLOAT * (worst + gram + COPIES_PER_PARAMETER * n_params)
