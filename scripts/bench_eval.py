#!/usr/bin/env python
"""How precise the held-out loss is: the yardstick of issue 14.

    python -m superposition.run task=identity hydra.run.dir=runs/identity
    python -m superposition.run task=abs hydra.run.dir=runs/abs
    python scripts/bench_eval.py runs/identity runs/abs            # ~3 minutes on a 2-core CPU
    python scripts/bench_eval.py runs/identity --check-rows 1000000 --repeats 3   # quicker

For every run directory given, on the kept weights of every level (weights.safetensors):

1. check: the reported eval_loss ± eval_loss_se against an independent plain Monte Carlo
   evaluation on --check-rows rows (torch's own generator, float64 sums, nothing of the
   package's sampler or estimator), as z = difference / combined standard error. |z| <= 3 is the
   issue's criterion.
2. equal time: the package's estimator (analysis.evaluate, stratified where it applies) against
   plain Monte Carlo on the same number of rows (what the runner did before issue 14: the same
   held-out stream, every row sampled), both timed over all levels at once, --repeats times,
   interleaved; medians. Per level it prints both standard errors and the variance ratio at
   equal time, (se_mc² · t_mc) / (se² · t): how many times lower the estimator's variance is
   when both get the same evaluation time.

Figures go to stdout, and with --json FILE to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from superposition.analysis.evaluate import MONTE_CARLO, Chunk, _monte_carlo, evaluate_instances
from superposition.config import DataConfig
from superposition.store.results import Run, load_run
from superposition.tasks.model import ModelSpec, forward, target_of

CPU = torch.device("cpu")


def model_spec(run: Run) -> ModelSpec:
    r = run.results
    return ModelSpec(r.task, r.n_features, r.d_hidden, r.hidden_relu)


def level_inputs(run: Run) -> tuple[torch.Tensor, torch.Tensor, DataConfig]:
    probability = torch.tensor([lv.feature_probability for lv in run.levels])
    importance = torch.tensor([lv.importance for lv in run.levels])
    data = DataConfig(
        correlated_pairs=run.results.data.correlated_pairs,
        anticorrelated_pairs=run.results.data.anticorrelated_pairs,
    )
    return probability, importance, data


@torch.no_grad()
def independent_monte_carlo(
    spec: ModelSpec, params: dict, p: float, importance: torch.Tensor, rows: int, seed: int
) -> tuple[float, float]:
    """Mean loss and its standard error on `rows` rows drawn with torch.rand: feature i active
    with probability p, magnitude uniform in the task's range (independent features only)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = spec.definition.magnitudes
    one = {k: v.unsqueeze(0) for k, v in params.items()}
    total = squares = 0.0
    batch = 200_000
    done = 0
    while done < rows:
        size = min(batch, rows - done)
        u = torch.rand(1, size, spec.n_features, generator=generator)
        m = torch.rand(1, size, spec.n_features, generator=generator)
        x = torch.where(u < p, low + (high - low) * m, 0.0)
        error = (target_of(spec, x) - forward(spec, one, x)).pow(2)
        per_row = (importance.view(1, 1, -1) * error).mean(dim=2).double()
        total += per_row.sum().item()
        squares += per_row.pow(2).sum().item()
        done += size
    mean = total / rows
    return mean, max(squares / rows - mean**2, 0.0) ** 0.5 / rows**0.5


def check(run_dir: Path, run: Run, rows: int) -> list[dict]:
    spec = model_spec(run)
    probability, importance, data = level_inputs(run)
    if data.correlated_pairs or data.anticorrelated_pairs:
        print(f"{run_dir}: feature pairs; the independent check draws independent features only")
        return []
    print(f"\n{run_dir}: reported eval_loss against an independent {rows:,}-row Monte Carlo")
    print(f"{'p':>8} {'reported':>12} {'± SE':>9} {'independent':>12} {'± SE':>9} {'z':>6}")
    figures = []
    for level, lv in enumerate(run.levels):
        if lv.eval_loss is None:
            continue
        params = {k: v[level] for k, v in run.weights.items()}
        mean, se = independent_monte_carlo(
            spec, params, float(probability[level]), importance[level], rows, seed=1000 + level
        )
        reported_se = lv.eval_loss_se or 0.0
        z = (lv.eval_loss - mean) / (reported_se**2 + se**2) ** 0.5
        print(
            f"{lv.feature_probability:>8g} {lv.eval_loss:>12.6g} {reported_se:>9.2g} "
            f"{mean:>12.6g} {se:>9.2g} {z:>6.2f}"
        )
        figures.append(
            {
                "p": lv.feature_probability,
                "reported": lv.eval_loss,
                "reported_se": reported_se,
                "independent": mean,
                "independent_se": se,
                "z": z,
            }
        )
    worst = max((abs(f["z"]) for f in figures), default=0.0)
    print(f"largest |z|: {worst:.2f} ({'within' if worst <= 3 else 'OUTSIDE'} ±3)")
    return figures


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def equal_time(run_dir: Path, run: Run, rows: int, repeats: int) -> list[dict]:
    spec = model_spec(run)
    probability, importance, data = level_inputs(run)
    levels = torch.arange(run.n_levels)
    finite = [lv.eval_loss is not None for lv in run.levels]
    params = {k: v[finite] for k, v in run.weights.items()}
    levels, probability, importance = levels[finite], probability[finite], importance[finite]

    def estimator():
        return evaluate_instances(spec, params, levels, probability, importance, 0, rows, CPU, data)

    def plain():
        chunk = Chunk(params, levels, probability, importance)
        return _monte_carlo(spec, chunk, 0, rows, data, 0)

    estimator(), plain()  # warm-up
    times: dict[str, list[float]] = {"estimator": [], "plain": []}
    for repeat in range(repeats):
        order = ("estimator", "plain") if repeat % 2 == 0 else ("plain", "estimator")
        for name in order:
            seconds, value = timed(estimator if name == "estimator" else plain)
            times[name].append(seconds)
            if name == "estimator":
                estimate = value
            else:
                plain_se = value[1]
    t_est, t_plain = statistics.median(times["estimator"]), statistics.median(times["plain"])
    print(
        f"\n{run_dir}: {estimate.method} against plain Monte Carlo, {rows:,} rows per level, "
        f"{int(sum(finite))} levels: {t_est:.3f} s against {t_plain:.3f} s "
        f"(medians of {repeats}; time ratio {t_est / t_plain:.2f})"
    )
    print(f"{'p':>8} {'SE':>10} {'SE plain':>10} {'variance ratio at equal time':>30}")
    figures = []
    for i, lv in enumerate(lv for lv, ok in zip(run.levels, finite, strict=True) if ok):
        se, se_plain = float(estimate.se[i]), float(plain_se[i])
        ratio = (se_plain**2 * t_plain) / (se**2 * t_est) if se > 0 else float("inf")
        print(f"{lv.feature_probability:>8g} {se:>10.3g} {se_plain:>10.3g} {ratio:>30.4g}")
        figures.append(
            {"p": lv.feature_probability, "se": se, "se_plain": se_plain, "ratio": ratio}
        )
    if estimate.method == MONTE_CARLO:
        print("(plain Monte Carlo both: the ratio is 1 up to timing noise)")
    return [{"seconds": t_est, "seconds_plain": t_plain, "levels": figures}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--check-rows", type=int, default=10_000_000, help="0: no independent check"
    )
    parser.add_argument("--rows", type=int, default=131072, help="rows per level (eval.batch_size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    report = {}
    for run_dir in args.run_dirs:
        run = load_run(run_dir)
        report[str(run_dir)] = {
            "check": check(run_dir, run, args.check_rows) if args.check_rows else [],
            "equal_time": equal_time(run_dir, run, args.rows, args.repeats),
        }
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
