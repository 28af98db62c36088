"""Loss and parameter gradients of one batch, written out by hand.

Autograd records every operation and allocates every intermediate; the toy models are small enough
that this bookkeeping costs more than the arithmetic. Here the forward and backward passes are a
fixed list of batched matrix products and in-place element-wise operations on buffers that live as
long as the chunk. Both models are written as one encoder-decoder:

    pre = x W1ᵀ,  hidden = ReLU(pre) (abs, or identity with hidden_relu) else pre,
    out = ReLU(hidden W2ᵀ + b)

with W1 = W and W2 = Wᵀ for the tied identity model, and the target t = x (identity) or |x| (abs).
With g = ∂L/∂(hidden W2ᵀ + b) = 2 I (out − t) [out > 0] / (rows · features):
∂b = Σ_rows g, ∂W2 = gᵀ hidden, ∂hidden = g W2, ∂pre = ∂hidden [pre > 0] (with a hidden ReLU),
∂W1 = ∂preᵀ x, and ∂W = ∂W1 + ∂W2ᵀ.

A batch packs its rows with an active feature and counts the all-zero rows it left out (see
batches.py). An all-zero row has out = ReLU(b) and target 0: it adds I ReLU(b)² to the loss and
2 I ReLU(b) / (rows · features) to ∂b, so those rows cost nothing. When a sparse batch comes as a
list of entries, the products with x (pre = x W1ᵀ and ∂preᵀ x) are a gather and a scatter of one
encoder column per entry, and out − t is corrected at the entries only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from superposition.engine.batches import Batch
from superposition.tasks.model import ModelSpec
from superposition.tasks.task import EncoderDecoder


@dataclass(frozen=True)
class FastModel:
    """A task's fast path (its EncoderDecoder) at one size."""

    family: EncoderDecoder
    n_features: int
    d_hidden: int

    @classmethod
    def of(cls, spec: ModelSpec) -> FastModel | None:
        """The fast model of spec's task, None when the task has no fast path."""
        family = spec.definition.fast_path(spec.shape)
        return None if family is None else cls(family, spec.n_features, spec.d_hidden)

    @property
    def tied(self) -> bool:
        return self.family.tied

    @property
    def hidden_relu(self) -> bool:
        return self.family.hidden_relu

    @property
    def abs_target(self) -> bool:
        return self.family.abs_target


class Workspace:
    """Buffers of one group of instances for batches of up to `rows` rows, reused every step."""

    def __init__(self, spec: FastModel, n_instances: int, rows: int, device: torch.device):
        f, h = spec.n_features, spec.d_hidden
        self.n_instances, self.n_features, self.d_hidden = n_instances, f, h
        self.by_feature = torch.empty(2, n_instances * rows * f, device=device)
        self.by_hidden = torch.empty(2, n_instances * rows * h, device=device)
        self.encoder_by_feature = torch.empty(n_instances * f, h, device=device)
        self.gram = torch.empty(n_instances, f, f, device=device) if gram_pays(spec) else None
        self.d_gram = torch.empty_like(self.gram) if self.gram is not None else None

    def views(self, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(out, scratch, hidden, d_hidden), contiguous, for a batch of `rows` rows."""
        n, f, h = self.n_instances, self.n_features, self.d_hidden
        out, scratch = (buffer[: n * rows * f].view(n, rows, f) for buffer in self.by_feature)
        hidden, d_hidden = (buffer[: n * rows * h].view(n, rows, h) for buffer in self.by_hidden)
        return out, scratch, hidden, d_hidden


def gram_pays(spec: FastModel) -> bool:
    """Whether the tied linear model's dense blocks go through its Gram matrix (_gram_gradients):
    two products of rows · features² instead of five of rows · features · hidden. Measured on a
    CPU it pays up to features = 2 hidden + 1 (with entries, a gather and a scatter of one row of
    WᵀW per entry did not pay against the hidden-unit path)."""
    return spec.tied and not spec.hidden_relu and spec.n_features <= 2 * spec.d_hidden + 1


def _relu_backward_(grad: Tensor, pre_activation: Tensor) -> Tensor:
    """grad[pre_activation <= 0] = 0, in place (ReLU's own backward: one pass, no mask tensor)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, pre_activation, 0, grad_input=grad)


def _encoder(spec: FastModel, params: dict[str, Tensor]) -> Annotated[Tensor, "instance hid feat"]:
    return params["W"] if spec.tied else params["W1"]


def _decoder(spec: FastModel, params: dict[str, Tensor]) -> Annotated[Tensor, "instance hid feat"]:
    return params["W"] if spec.tied else params["W2"].transpose(1, 2)


def _target_of(spec: FastModel, x: Tensor) -> Tensor:
    return x.abs() if spec.abs_target else x


def _add_scaled_rows(
    source: Annotated[Tensor, "row width"],
    take: Annotated[Tensor, "slot"],
    target: Annotated[Tensor, "row width"],
    put: Annotated[Tensor, "slot"],
    magnitude: Annotated[Tensor, "slot"],
) -> None:
    """target[put[k]] += magnitude[k] · source[take[k]] for every entry slot k."""
    rows = source.index_select(0, take).mul_(magnitude.unsqueeze(1))
    target.index_add_(0, put, rows)


def _encode(
    spec: FastModel,
    encoder: Annotated[Tensor, "instance hid feat"],
    batch: Batch,
    work: Workspace,
    pre: Annotated[Tensor, "instance row hid"],
) -> None:
    """pre = x encoderᵀ, from the block or from the entries (one encoder column per entry)."""
    if batch.entries is None:
        torch.bmm(batch.x, encoder.transpose(1, 2), out=pre)
        return
    entries, by_feature = batch.entries, work.encoder_by_feature
    by_feature.view(-1, spec.n_features, spec.d_hidden).copy_(encoder.transpose(1, 2))
    flat_pre = pre.zero_().view(-1, spec.d_hidden)
    _add_scaled_rows(by_feature, entries.feature, flat_pre, entries.row, entries.magnitude)


def _add_encoder_gradient(
    spec: FastModel,
    d_pre: Annotated[Tensor, "instance row hid"],
    batch: Batch,
    work: Workspace,
    grad: Annotated[Tensor, "instance hid feat"],
) -> None:
    """grad += d_preᵀ x, from the block or from the entries (one row of d_pre per entry)."""
    if batch.entries is None:
        grad.baddbmm_(d_pre.transpose(1, 2), batch.x)
        return
    entries, by_feature = batch.entries, work.encoder_by_feature.zero_()
    flat_d_pre = d_pre.view(-1, spec.d_hidden)
    _add_scaled_rows(flat_d_pre, entries.row, by_feature, entries.feature, entries.magnitude)
    grad.add_(by_feature.view(-1, spec.n_features, spec.d_hidden).transpose(1, 2))


def _output_gradient(
    spec: FastModel, out: Tensor, batch: Batch, scratch: Tensor, entries_target: Tensor | None
) -> Tensor:
    """(out − t) [out > 0], before the per-feature scale, from the pre-activation `out`, into
    scratch."""
    if batch.entries is None:
        target = torch.abs(batch.x, out=scratch) if spec.abs_target else batch.x
        return _relu_backward_(torch.sub(out, target, out=scratch), out)
    g = torch.clamp(out, min=0, out=scratch)
    entries = batch.entries
    active_out = out.view(-1).index_select(0, entries.flat)
    correction = entries_target * torch.sign(active_out.clamp_(min=0))
    g.view(-1).index_add_(0, entries.flat, correction, alpha=-1)
    return g


def _loss(
    spec: FastModel,
    out: Tensor,
    batch: Batch,
    scratch: Tensor,
    entries_target: Tensor | None,
    relu_b: Tensor,
    importance: Tensor,
) -> Annotated[Tensor, "instance"]:
    """Mean over all rows and features of I (ReLU(out) − t)², before `out` is reused."""
    relu_out = torch.clamp(out, min=0, out=scratch)
    if batch.entries is None:
        squared = relu_out.sub_(_target_of(spec, batch.x)).square_()
    else:  # (o − t)² = o² − 2 o t + t², with t non-zero at the entries only
        entries = batch.entries
        at_entries = relu_out.view(-1).index_select(0, entries.flat)
        squared = relu_out.square_()
        correction = entries_target * (entries_target - 2 * at_entries)
        squared.view(-1).index_add_(0, entries.flat, correction)
    per_feature = squared.sum(dim=1) + batch.zero_rows * relu_b.square()
    n_rows_total = batch.n_rows + batch.zero_rows
    return (per_feature * importance).sum(dim=1) / (n_rows_total * spec.n_features)


def _output_stage(
    spec: FastModel,
    out: Annotated[Tensor, "instance row feature"],
    batch: Batch,
    scratch: Annotated[Tensor, "instance row feature"],
    entries_target: Tensor | None,
    b: Annotated[Tensor, "instance feature"],
    importance: Annotated[Tensor, "instance feature"],
    grads: dict[str, Tensor],
    want_loss: bool,
) -> tuple[Tensor, Annotated[Tensor, "instance feature"], Tensor | None]:
    """From the output pre-activation `out`: the loss (when want_loss), the bias gradient (into
    grads["b_final"]), and (g_unscaled in scratch, scale) with g = g_unscaled · scale. The
    per-feature scale 2 I / (rows · features) is left to the small results (sums and products
    over rows) rather than applied to the whole block."""
    relu_b = b.clamp(min=0)
    loss = None
    if want_loss:
        loss = _loss(spec, out, batch, scratch, entries_target, relu_b, importance)
    scale = importance * (2.0 / ((batch.n_rows + batch.zero_rows) * spec.n_features))
    g_unscaled = _output_gradient(spec, out, batch, scratch, entries_target)
    torch.sum(g_unscaled, dim=1, out=grads["b_final"])
    if batch.zero_rows:
        grads["b_final"].add_(relu_b, alpha=batch.zero_rows)
    grads["b_final"].mul_(scale)
    return g_unscaled, scale, loss


def loss_and_gradients(
    spec: FastModel,
    params: dict[str, Tensor],
    batch: Batch,
    importance: Annotated[Tensor, "instance feature"],
    grads: dict[str, Tensor],
    work: Workspace,
    want_loss: bool,
) -> Annotated[Tensor, "instance"] | None:
    """Write every parameter's gradient of the summed instance losses into `grads`; return the
    loss per instance when want_loss (it takes extra passes, so the trainer asks at log steps)."""
    if gram_pays(spec) and batch.entries is None:
        return _gram_gradients(spec, params, batch, importance, grads, work, want_loss)
    encoder, decoder, b = _encoder(spec, params), _decoder(spec, params), params["b_final"]
    out, scratch, hidden, d_hidden = work.views(batch.n_rows)
    entries_target = None
    if batch.entries is not None:
        entries_target = _target_of(spec, batch.entries.magnitude)

    _encode(spec, encoder, batch, work, hidden)
    if spec.hidden_relu:
        hidden.clamp_(min=0)
    torch.baddbmm(b.unsqueeze(1), hidden, decoder, out=out)  # before the output ReLU

    g_unscaled, scale, loss = _output_stage(
        spec, out, batch, scratch, entries_target, b, importance, grads, want_loss
    )

    scaled_decoder = decoder * scale.unsqueeze(1)
    torch.bmm(g_unscaled, scaled_decoder.transpose(1, 2), out=d_hidden)
    if spec.hidden_relu:
        _relu_backward_(d_hidden, hidden)
    if spec.tied:
        torch.bmm(hidden.transpose(1, 2), g_unscaled, out=grads["W"])
        grads["W"].mul_(scale.unsqueeze(1))
        _add_encoder_gradient(spec, d_hidden, batch, work, grads["W"])
    else:
        torch.bmm(g_unscaled.transpose(1, 2), hidden, out=grads["W2"])
        grads["W2"].mul_(scale.unsqueeze(2))
        _add_encoder_gradient(spec, d_hidden, batch, work, grads["W1"].zero_())
    return loss


def _gram_gradients(
    spec: FastModel,
    params: dict[str, Tensor],
    batch: Batch,
    importance: Annotated[Tensor, "instance feature"],
    grads: dict[str, Tensor],
    work: Workspace,
    want_loss: bool,
) -> Annotated[Tensor, "instance"] | None:
    """loss_and_gradients of the tied linear model on a dense block, through G = WᵀW:
    out = ReLU(x G + b), ∂L/∂G = xᵀ g and ∂L/∂W = W (∂G + ∂Gᵀ)."""
    W, b = params["W"], params["b_final"]
    out, scratch, _, _ = work.views(batch.n_rows)
    gram = torch.bmm(W.transpose(1, 2), W, out=work.gram)
    torch.baddbmm(b.unsqueeze(1), batch.x, gram, out=out)

    g_unscaled, scale, loss = _output_stage(
        spec, out, batch, scratch, None, b, importance, grads, want_loss
    )
    d_gram = torch.bmm(batch.x.transpose(1, 2), g_unscaled, out=work.d_gram)
    d_gram.mul_(scale.unsqueeze(1))
    torch.bmm(W, d_gram.add_(d_gram.transpose(1, 2).clone()), out=grads["W"])
    return loss
