#!/usr/bin/env python
"""This trainer against the course's own training loop, on one config, over several seeds.

    python scripts/course_check.py outputs/2026-12-03/09-00-00_abs            # 3 seeds
    python scripts/course_check.py RUN_DIR --seeds 5 --json check.json

RUN_DIR is the output directory of any run: only its config (.hydra/config.yaml) is read. For
each seed both sides train every instance of that config:
- course: scripts/bench.py's ReferenceToyModel, the loop the course writes (torch.rand batches,
  einops forward, autograd, torch.optim.Adam, torch.manual_seed(seed));
- project: superposition.engine.train.train_grid, as a job calls it.
Both start from the same initial distribution (model.init_scales for the config's model.init).
Every restart of both is then scored by an evaluator that shares no code with the package's
sampler or forward: course-style rows (torch.rand from a fixed generator), a plain einsum
forward. Each side keeps, per level, the restart that is best on a selection batch (as many rows
as the config's eval.batch_size, the same rows for both sides), and the kept restarts are scored
on fresh rows, enough for every feature to be active about --rows-per-active times (at least
2^20). Rows with no active feature all give the same loss, so only the others go through the
model. The table gives, per level, the mean over seeds of the kept loss of each side and their
ratio, and the median over all restarts and seeds of each side's loss and their ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
from einops import einsum
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import Tensor

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench import ReferenceToyModel  # noqa: E402

from superposition.analysis.metrics import computed_fraction, represented, sign_counts  # noqa: E402
from superposition.config import InitScheme, TrainConfig  # noqa: E402
from superposition.engine.train import train_grid  # noqa: E402
from superposition.grid import sparsity_grid  # noqa: E402
from superposition.tasks.model import ModelSpec  # noqa: E402

SELECTION_SEED = 1_000_003
SCORING_SEED = 2_000_003
ROWS_PER_CHUNK = 2**16


def load_config(run_dir: Path):
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        sys.exit(f"error: {path} not found; give the output directory of a finished run")
    cfg = OmegaConf.load(path)
    unsupported = [
        (cfg.sweep.get("relative_importance"), "sweep.relative_importance"),
        (cfg.data.get("correlated_pairs") or cfg.data.get("anticorrelated_pairs"), "data pairs"),
        (cfg.train.lr_schedule != "constant", "train.lr_schedule other than constant"),
        (cfg.train.optimizer != "adam" or cfg.train.weight_decay, "an optimizer other than adam"),
    ]
    for present, what in unsupported:
        if present:
            sys.exit(f"error: the course-style reference has no {what}; check a plain sweep")
    return cfg


def course_rows(
    generator: torch.Generator, n_rows: int, p: float, n_features: int, task: str
) -> Annotated[Tensor, "row feature"]:
    magnitude = torch.rand(n_rows, n_features, generator=generator)
    if task == "abs":
        magnitude = 2 * magnitude - 1
    seeds = torch.rand(n_rows, n_features, generator=generator)
    return torch.where(seeds < p, magnitude, 0.0)


def course_forward(
    task: str, params: dict[str, Tensor], x: Annotated[Tensor, "row feature"], hidden_relu: bool
) -> Annotated[Tensor, "row feature"]:
    if task == "identity":
        hidden = einsum(x, params["W"], "row feat, hid feat -> row hid")
        if hidden_relu:
            hidden = torch.relu(hidden)
        out = einsum(hidden, params["W"], "row hid, hid feat -> row feat")
    else:
        hidden = torch.relu(einsum(x, params["W1"], "row feat, hid feat -> row hid"))
        out = einsum(hidden, params["W2"], "row hid, feat hid -> row feat")
    return torch.relu(out + params["b_final"])


def row_losses(
    task: str,
    params: dict[str, Tensor],
    x: Annotated[Tensor, "row feature"],
    importance: Annotated[Tensor, "feature"],
    hidden_relu: bool,
) -> Annotated[Tensor, "row"]:
    target = x.abs() if task == "abs" else x
    out = course_forward(task, params, x, hidden_relu)
    return (importance * (target - out).pow(2)).mean(dim=-1).double()


@torch.no_grad()
def score(
    task: str,
    models: list[dict[str, Tensor]],
    p: float,
    importance: Tensor,
    n_rows: int,
    seed: int,
    hidden_relu: bool,
) -> tuple[Annotated[Tensor, "model"], Annotated[Tensor, "model model"]]:
    """Mean loss of each model on the same n_rows course-style rows, and the covariance of those
    means (the per-row covariance over n_rows)."""
    generator = torch.Generator().manual_seed(seed)
    n_features = importance.shape[0]
    zero_row = torch.zeros(1, n_features)
    zero_loss = torch.cat([row_losses(task, m, zero_row, importance, hidden_relu) for m in models])
    sums = torch.zeros(len(models), dtype=torch.float64)
    products = torch.zeros(len(models), len(models), dtype=torch.float64)
    for start in range(0, n_rows, ROWS_PER_CHUNK):
        x = course_rows(generator, min(ROWS_PER_CHUNK, n_rows - start), p, n_features, task)
        active = x.ne(0).any(dim=-1)
        n_zero = int((~active).sum())
        losses = torch.stack(
            [row_losses(task, m, x[active], importance, hidden_relu) for m in models]
        )
        sums += losses.sum(dim=1) + n_zero * zero_loss
        products += losses @ losses.T + n_zero * torch.outer(zero_loss, zero_loss)
    means = sums / n_rows
    covariance = (products / n_rows - torch.outer(means, means)) / n_rows
    return means, covariance


def sign_text(task: str, params: dict[str, Tensor]) -> str:
    if task != "abs":
        return "–"
    both, one = sign_counts(computed_fraction(params))
    return f"{int(represented(params['W1']).sum())}/{both}/{one}"


def train_side(side: str, spec: ModelSpec, grid, cfg, seed: int) -> dict[str, Tensor]:
    """All instances' trained parameters (instance axis first, on the CPU)."""
    if side == "course":
        torch.manual_seed(seed)
        model = ReferenceToyModel(
            spec, grid.instance_probability(), grid.instance_importance(), torch.device("cpu")
        )
        model.optimize(batch_size=cfg.train.batch_size, steps=cfg.train.steps, lr=cfg.train.lr)
        return model.trained_params()
    train_cfg = TrainConfig(
        restarts=cfg.train.restarts,
        steps=cfg.train.steps,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
    )
    return train_grid(spec, grid, train_cfg, seed, torch.device("cpu")).params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="output directory of a run (its config)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument(
        "--rows-per-active",
        type=float,
        default=10_000,
        help="scoring rows per level: enough that each feature is active about this many times",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--save",
        type=Path,
        help="write every trained instance of both sides to SAVE/seed<n>_<side>.safetensors",
    )
    args = parser.parse_args(argv)

    cfg = load_config(args.run_dir)
    task = cfg.task if isinstance(cfg.task, str) else cfg.task.name  # format 1: a plain name
    if task not in ("identity", "abs"):
        sys.exit(f"error: the course's loop exists for identity and abs only, not task {task}")
    spec = ModelSpec(
        task,
        cfg.model.n_features,
        cfg.model.d_hidden,
        bool(cfg.model.hidden_relu),
        InitScheme(cfg.model.get("init", "per_instance")),
    )
    probabilities = list(cfg.sweep.feature_probability)
    grid = sparsity_grid(probabilities, spec.n_features, cfg.importance.decay, cfg.train.restarts)
    print(
        f"{task} {spec.n_features} -> {spec.d_hidden}, {grid.n_instances} instances, "
        f"{cfg.train.steps} steps, init {spec.init_scheme.value}, seeds 0..{args.seeds - 1}",
        flush=True,
    )
    sides = ("project", "course")
    # kept[side][level]: kept loss per seed; every[side][level]: every restart's scored loss
    kept = {side: [[] for _ in probabilities] for side in sides}
    every = {side: [[] for _ in probabilities] for side in sides}
    signs = {side: [[] for _ in probabilities] for side in sides}
    seconds = {side: 0.0 for side in sides}
    for seed in range(args.seeds):
        trained = {}
        for side in sides:
            started = time.perf_counter()
            trained[side] = train_side(side, spec, grid, cfg, seed)
            seconds[side] += time.perf_counter() - started
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                path = args.save / f"seed{seed}_{side}.safetensors"
                save_file({k: v.contiguous() for k, v in trained[side].items()}, str(path))
        for level, p in enumerate(probabilities):
            importance = grid.importance[level].float()
            models = [
                {k: v[level * grid.restarts + r].float() for k, v in trained[side].items()}
                for side in sides
                for r in range(grid.restarts)
            ]
            n_restarts = grid.restarts
            selection, _ = score(
                task,
                models,
                p,
                importance,
                cfg.eval.batch_size,
                SELECTION_SEED + 1000 * seed + level,
                spec.hidden_relu,
            )
            n_rows = max(2**20, math.ceil(args.rows_per_active / p))
            scored, _ = score(
                task,
                models,
                p,
                importance,
                n_rows,
                SCORING_SEED + 1000 * seed + level,
                spec.hidden_relu,
            )
            for k, side in enumerate(sides):
                part = slice(k * n_restarts, (k + 1) * n_restarts)
                best = k * n_restarts + int(selection[part].argmin())
                kept[side][level].append(float(scored[best]))
                every[side][level] += scored[part].tolist()
                signs[side][level].append(sign_text(task, models[best]))
        print(f"seed {seed} done", flush=True)

    print()
    print(
        "| p | kept loss: project | course | project / course | median restart: project | "
        "course | project / course | represented/both signs/one sign (kept, per seed): "
        "project; course |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows_out = []
    for level, p in enumerate(probabilities):
        mean_kept = {side: statistics.fmean(kept[side][level]) for side in sides}
        median_all = {side: statistics.median(every[side][level]) for side in sides}
        kept_ratio = mean_kept["project"] / mean_kept["course"]
        median_ratio = median_all["project"] / median_all["course"]
        sign_cells = "; ".join(" ".join(signs[side][level]) for side in sides)
        print(
            f"| {p:g} | {mean_kept['project']:.3g} | {mean_kept['course']:.3g} | "
            f"{kept_ratio:.2f} | {median_all['project']:.3g} | {median_all['course']:.3g} | "
            f"{median_ratio:.2f} | {sign_cells} |"
        )
        rows_out.append(
            {
                "feature_probability": p,
                "kept": {side: kept[side][level] for side in sides},
                "restarts": {side: every[side][level] for side in sides},
                "kept_ratio": kept_ratio,
                "median_ratio": median_ratio,
                "signs": {side: signs[side][level] for side in sides},
            }
        )
    print(
        f"training seconds: project {seconds['project']:.0f}, course loop {seconds['course']:.0f}"
    )
    if args.json:
        out = {"run": str(args.run_dir), "seeds": args.seeds, "levels": rows_out}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
