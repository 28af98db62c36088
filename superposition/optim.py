"""Adam / AdamW over instance-stacked parameters, with instances that can be frozen.

Element-wise like torch.optim.Adam(W), so instances never influence each other. A frozen instance
(its loss turned non-finite) keeps the parameters it had before the bad step.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from superposition.config import LRSchedule, Optimizer


def learning_rate(base_lr: float, schedule: LRSchedule, step: int, steps: int) -> float:
    """constant; linear from lr to 0; cosine from lr to 0 (half a cosine period)."""
    frac = step / steps
    if schedule == LRSchedule.linear:
        return base_lr * (1 - frac)
    if schedule == LRSchedule.cosine:
        return base_lr * 0.5 * (1 + math.cos(math.pi * frac))
    return base_lr


class InstanceAdam:
    def __init__(
        self,
        params: list[Tensor],
        kind: Optimizer = Optimizer.adam,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = params
        self.kind = kind
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float, alive: Annotated[Tensor, "instance"]) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1**self.t
        bias2_sqrt = math.sqrt(1 - beta2**self.t)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            grad = p.grad
            if self.kind == Optimizer.adam and self.weight_decay:
                grad = grad + self.weight_decay * p
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            update = (m / bias1) / (v.sqrt() / bias2_sqrt + self.eps)
            if self.kind == Optimizer.adamw and self.weight_decay:
                update = update + self.weight_decay * p
            keep = alive.view(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.where(keep, p - lr * update, p))

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "exp_avg": [m.detach().cpu() for m in self.exp_avg],
            "exp_avg_sq": [v.detach().cpu() for v in self.exp_avg_sq],
        }

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for mine, saved in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True
        ):
            mine.copy_(saved)
