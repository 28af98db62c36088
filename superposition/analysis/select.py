"""Keep, for every grid point, the restart with the lowest held-out loss, and say which others
the evaluation cannot tell from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

# a restart is "near best" when its loss is within this many standard errors of the difference
# (the two errors combined as if independent: the shared rows make the true one smaller, so a
# near-best list errs on the side of listing a restart)
NEAR_BEST_SE = 2.0


@dataclass
class Selection:
    best_restart: list[int | None]  # per level; None when no restart stayed finite
    best_loss: list[float | None]
    eval_loss: Annotated[Tensor, "level restart"]  # +inf where an instance was frozen
    excluded: list[tuple[int, int]]  # (level, restart) of frozen or non-finite instances
    eval_loss_se: Annotated[Tensor, "level restart"] | None = None  # NaN where frozen
    # per level: restarts within NEAR_BEST_SE standard errors of the best, the best included
    near_best: list[list[int]] | None = None


def select_best(
    eval_loss: Annotated[Tensor, "instance"],
    finite: Annotated[Tensor, "instance"],
    restarts: int,
    eval_loss_se: Annotated[Tensor, "instance"] | None = None,
) -> Selection:
    usable = finite & torch.isfinite(eval_loss)
    masked = torch.where(usable, eval_loss, torch.inf).view(-1, restarts)
    best_loss, best = masked.min(dim=1)
    ok = torch.isfinite(best_loss)
    excluded = [divmod(int(i), restarts) for i in torch.nonzero(~usable).flatten()]
    se, near = None, None
    if eval_loss_se is not None:
        se = torch.where(usable, eval_loss_se, torch.nan).view(-1, restarts)
        best_se = se.gather(1, best.unsqueeze(1))
        margin = NEAR_BEST_SE * (se.pow(2) + best_se.pow(2)).sqrt()
        gap = masked - best_loss.unsqueeze(1)
        # the best itself always (its error may be unknown: NaN)
        close = ((gap <= margin) | (gap == 0)) & usable.view(-1, restarts)
        near = [torch.nonzero(row).flatten().tolist() for row in close]
    return Selection(
        best_restart=[int(b) if good else None for b, good in zip(best, ok, strict=True)],
        best_loss=[float(v) if good else None for v, good in zip(best_loss, ok, strict=True)],
        eval_loss=masked,
        excluded=excluded,
        eval_loss_se=se,
        near_best=near,
    )


def gather_best(
    params: dict[str, Tensor], selection: Selection, restarts: int
) -> dict[str, Tensor]:
    """The selected instance of every level, level axis first; NaN where a level has none."""
    chosen = {}
    for name, value in params.items():
        per_level = value.view(-1, restarts, *value.shape[1:])
        picks = []
        for level, restart in enumerate(selection.best_restart):
            if restart is None:
                picks.append(torch.full(value.shape[1:], torch.nan, dtype=value.dtype))
            else:
                picks.append(per_level[level, restart])
        chosen[name] = torch.stack(picks).contiguous()
    return chosen
