"""Keep, for every grid point, the restart with the lowest held-out loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor


@dataclass
class Selection:
    best_restart: list[int | None]  # per level; None when no restart stayed finite
    best_loss: list[float | None]
    eval_loss: Annotated[Tensor, "level restart"]  # +inf where an instance was frozen
    excluded: list[tuple[int, int]]  # (level, restart) of frozen or non-finite instances


def select_best(
    eval_loss: Annotated[Tensor, "instance"], finite: Annotated[Tensor, "instance"], restarts: int
) -> Selection:
    usable = finite & torch.isfinite(eval_loss)
    masked = torch.where(usable, eval_loss, torch.inf).view(-1, restarts)
    best_loss, best = masked.min(dim=1)
    ok = torch.isfinite(best_loss)
    excluded = [divmod(int(i), restarts) for i in torch.nonzero(~usable).flatten()]
    return Selection(
        best_restart=[int(b) if good else None for b, good in zip(best, ok, strict=True)],
        best_loss=[float(v) if good else None for v, good in zip(best_loss, ok, strict=True)],
        eval_loss=masked,
        excluded=excluded,
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
