"""One job of the data flow: grid → train → evaluate → select → write → track. Knows no Hydra."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import Tensor

from superposition import tasks
from superposition.analysis.evaluate import (
    LossEstimate,
    evaluate_grid,
    evaluate_kept,
    feature_loss_ratio,
)
from superposition.analysis.geometry import (
    important_feature_count,
    important_features,
)
from superposition.analysis.metrics import computes_signs, level_metrics, one_sign_features
from superposition.analysis.restarts import restart_stats, shares_text
from superposition.analysis.select import NEAR_BEST_SE, Selection, gather_best, select_best
from superposition.analysis.verdicts import Report, judge, write_report
from superposition.config import Config, ConfigError
from superposition.engine import bytes_per_instance, resolve_engine
from superposition.engine.device import free_memory_bytes, resolve_device
from superposition.engine.threads import largest_block, plan_threads, using
from superposition.engine.train import TrainResult, train_grid
from superposition.grid import InstanceGrid, phase_cell, phase_sweep_grid, sparsity_grid
from superposition.live import LiveReport
from superposition.store.checkpoint import (
    Checkpointer,
    StopSignals,
    TrainingInterrupted,
    fingerprint,
)
from superposition.store.files import HISTORY, RESULTS, WEIGHTS, json_safe, write_tensors
from superposition.store.outdir import (
    check_not_busy,
    digests,
    exclusive,
    finished_results,
    remove_stale_temporaries,
)
from superposition.store.progress import ProgressFile, one_line
from superposition.store.results import (
    DataPairs,
    Exclusion,
    LevelResult,
    Run,
    RunResults,
    write_results,
)
from superposition.tasks import Shape
from superposition.tasks.model import ModelSpec
from superposition.track import Tracker


def model_spec(config: Config) -> ModelSpec:
    return ModelSpec(
        task=config.task.name,
        n_features=config.model.n_features,
        d_hidden=config.model.d_hidden,
        hidden_relu=config.model.hidden_relu,
        init=config.model.init,
    )


def build_grid(config: Config) -> InstanceGrid:
    if config.sweep.relative_importance:
        return phase_sweep_grid(
            config.sweep.relative_importance,
            config.sweep.feature_probability,
            config.model.n_features,
            config.importance.decay,
            config.train.restarts,
        )
    return sparsity_grid(
        config.sweep.feature_probability,
        config.model.n_features,
        config.importance.decay,
        config.train.restarts,
    )


# at most this many restart numbers in a printed line; more are counted
LISTED_RESTARTS = 10


def config_fingerprint(config: Config) -> str:
    """Fingerprint of the values that decide a run's results (not where or how fast it runs).

    The engine is left out like the chunk size, the thread count and the device: both engines
    train to the same weights up to float rounding, so a run resumes with either. A built-in
    task is its name (the fingerprints of earlier versions stay valid); a task of your own is its
    name and the file and content of its module, so that an edited module is not taken for the
    finished run."""
    values = asdict(config)
    for key in ("wandb", "device"):
        values.pop(key)
    for key in ("chunk_size", "memory_budget_mb", "checkpoint_every", "engine", "threads"):
        values["train"].pop(key)
    if config.task.module is None:
        values["task"] = config.task.name
    else:
        path = tasks.module_file(config.task.module)
        values["task"] = {"name": config.task.name, "module": path, "sha256": file_sha256(path)}
    return fingerprint(values)


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def results_summary(
    config: Config,
    run_fingerprint: str,
    grid: InstanceGrid,
    trained: TrainResult,
    selection: Selection,
    kept: LossEstimate,
    metrics: list[dict],
    loss_ratio: Annotated[Tensor, "level feature"],
    one_sign: list[list[int] | None],
    device: torch.device,
    restarts: list[dict] | None = None,
) -> RunResults:
    """What results.json records of the run; NaN and ±inf already null (JSON has no spelling).
    `kept`: the kept restarts' losses on fresh rows (evaluate_kept), the levels' eval_loss.
    restarts: each level's statistics over its restarts (analysis/restarts.py)."""
    levels = [
        level_result(
            config,
            grid,
            selection,
            kept,
            level,
            metrics[level],
            loss_ratio[level],
            one_sign[level],
        )
        for level in range(grid.n_levels)
    ]
    for level, stats in zip(levels, restarts or [None] * len(levels), strict=True):
        level.restart_stats = stats
    return RunResults(
        config_fingerprint=run_fingerprint,
        task=config.task.name,
        task_module=task_module_path(config),
        engine=resolve_engine(model_spec(config), config.train.engine).value,
        n_features=config.model.n_features,
        d_hidden=config.model.d_hidden,
        hidden_relu=config.model.hidden_relu,
        # the initial scale used (model.init with auto resolved; tasks/model.py, init_scales)
        init=model_spec(config).init_scheme.value,
        importance=grid.importance[0].tolist(),
        preset=config.preset,
        feature_probability=list(config.sweep.feature_probability),
        relative_importance=list(config.sweep.relative_importance),
        data=DataPairs(
            correlated_pairs=config.data.correlated_pairs,
            anticorrelated_pairs=config.data.anticorrelated_pairs,
        ),
        restarts=grid.restarts,
        steps=config.train.steps,
        seed=config.seed,
        device=str(device),
        eval_batch_size=config.eval.batch_size,
        eval_method=kept.method,
        chunk_size=trained.chunk_size,
        levels=levels,
        excluded=[Exclusion(level, restart) for level, restart in selection.excluded],
        levels_without_finite_restart=[
            level for level, best in enumerate(selection.best_restart) if best is None
        ],
        train_seconds=trained.seconds,
        instance_steps_per_s=trained.instance_steps_per_s,
        sampler_overflows=int(trained.sampler_overflows.sum()),
    )


def level_result(
    config: Config,
    grid: InstanceGrid,
    selection: Selection,
    kept: LossEstimate,
    level: int,
    metrics: dict,
    loss_ratio: Annotated[Tensor, "feature"],
    one_sign: list[int] | None,
) -> LevelResult:
    """One grid point's results."""
    importance = grid.importance[level].tolist()
    p = float(grid.feature_probability[level])
    has_kept = selection.best_restart[level] is not None
    restart_se = selection.eval_loss_se
    relative = level_relative_importance(config, level)
    return LevelResult(
        feature_probability=p,
        importance=importance,
        relative_importance=relative,
        best_restart=selection.best_restart[level],
        eval_loss=float(kept.loss[level]) if has_kept else None,
        eval_loss_se=float(kept.se[level]) if has_kept else None,
        restart_eval_losses=json_safe(selection.eval_loss[level].tolist()),
        restart_eval_loss_se=[] if restart_se is None else json_safe(restart_se[level].tolist()),
        near_best_restarts=[] if selection.near_best is None else selection.near_best[level],
        excluded_restarts=[r for lv, r in selection.excluded if lv == level],
        metrics=json_safe(metrics),
        feature_loss_ratio=json_safe(loss_ratio.tolist()),
        one_sign_features=one_sign,
        **level_references(config, importance, p, relative),
    )


def level_relative_importance(config: Config, level: int) -> float | None:
    """The extra feature's relative importance at this level of a phase sweep, else None."""
    relative = config.sweep.relative_importance
    if not relative:
        return None
    r_index, _ = phase_cell(level, len(config.sweep.feature_probability))
    return relative[r_index]


def task_module_path(config: Config) -> str | None:
    """Where the config's own task module is, as a file path (so that the run's figures can be
    redrawn from anywhere); None for a built-in task."""
    return None if config.task.module is None else tasks.module_file(config.task.module)


def level_references(
    config: Config, importance: list[float], p: float, relative_importance: float | None
) -> dict[str, Any]:
    """The level's closed-form reference losses (LevelResult's loss_constant, loss_dedicated,
    loss_closed_form and loss_closed_form_configs; README, "Baselines"), None where they do not
    apply: the task's baselines, and its closed_forms in a phase sweep (relative_importance set)
    on independent features."""
    task = tasks.get(config.task.name)
    baselines = (
        {} if task.baselines is None else task.baselines(importance, p, config.model.d_hidden)
    )
    configs = None
    independent = config.data.correlated_pairs == config.data.anticorrelated_pairs == 0
    if relative_importance is not None and independent and task.closed_forms is not None:
        shape = Shape(config.model.n_features, config.model.d_hidden, config.model.hidden_relu)
        configs = task.closed_forms(importance, p, shape)
    return {
        "loss_constant": baselines.get("constant"),
        "loss_dedicated": baselines.get("dedicated"),
        "loss_closed_form": None if not configs else min(configs.values()),
        "loss_closed_form_configs": configs or None,
    }


def run_job(
    config: Config,
    out_dir: Path,
    *,
    run_name: str,
    group: str | None = None,
    tracked_config: dict | None = None,
) -> RunResults:
    """Train, select, write and track one job; return what results.json holds.

    tracked_config is what W&B records as the run's config (the resolved Hydra config). The job
    holds the output directory's lock throughout (outdir.exclusive).
    """
    out_dir = Path(out_dir)
    with exclusive(out_dir):
        for path in remove_stale_temporaries(out_dir):
            print(f"removed {path}, left by an interrupted write")
        progress = ProgressFile(out_dir)
        # refused before the job is this directory's (another config's results): nothing written
        finished = finished_here(config, out_dir)
        if finished is not None:
            print(f"already finished, not trained again: results in {out_dir}")
            progress.step = progress.total = finished_steps(finished)
            progress.write("finished")
            return finished
        try:
            return _run_locked(config, out_dir, run_name, group, tracked_config, progress)
        except TrainingInterrupted:
            progress.write("interrupted")
            raise
        except Exception as err:
            progress.write("failed", error=one_line(err))
            raise
        except BaseException:  # a requeueing signal handler's SystemExit, KeyboardInterrupt
            progress.write("interrupted")
            raise


def finished_steps(results: RunResults) -> int:
    """The steps a finished run's progress bar counted: train.steps × chunks."""
    n_instances = results.n_levels * results.restarts
    return results.steps * math.ceil(n_instances / (results.chunk_size or n_instances or 1))


def check_fits_in_memory(config: Config) -> None:
    """ConfigError when a single instance's training step cannot fit in the device's free memory
    (the trainer can split instances into chunks, not one instance's batch)."""
    device = resolve_device(config.device)
    need = bytes_per_instance(
        model_spec(config),
        config.train.engine,
        config.train.batch_size,
        list(config.sweep.feature_probability),
    )
    free = free_memory_bytes(device)
    if need > free:
        raise ConfigError(
            f"not enough memory: one instance needs about {need / 2**30:.3g} GiB per training "
            f"step (model.n_features={config.model.n_features}, model.d_hidden="
            f"{config.model.d_hidden}, train.batch_size={config.train.batch_size}) and the "
            f"{device.type} has {free / 2**30:.3g} GiB free; lower train.batch_size or the model "
            "sizes"
        )


def finished_here(config: Config, out_dir: Path) -> RunResults | None:
    """The results of this config's finished run in out_dir, or None when there is none;
    ConfigError when out_dir holds another config's finished run or broken results."""
    finished = finished_results(out_dir)
    if finished is not None and finished.config_fingerprint != config_fingerprint(config):
        raise ConfigError(
            f"{out_dir} holds a finished run of another config; "
            "choose another output directory (hydra.run.dir=...)"
        )
    return finished


def check_directory(config: Config, out_dir: Path) -> None:
    """Everything the job would refuse out_dir for, checked without writing (run.py calls it
    before Hydra records its config there): another run holding it, another config's results or
    checkpoint, broken results or checkpoint."""
    if not Path(out_dir).is_dir():
        return
    check_not_busy(out_dir)
    if finished_here(config, out_dir) is None:
        Checkpointer(out_dir, config_fingerprint(config), 0).load()


def _run_locked(
    config: Config,
    out_dir: Path,
    run_name: str,
    group: str | None,
    tracked_config: dict | None,
    progress: ProgressFile,
) -> RunResults:
    run_fingerprint = config_fingerprint(config)
    device = resolve_device(config.device)
    spec, grid = model_spec(config), build_grid(config)
    threads = plan_threads(config.train.threads, largest_block(spec, grid, config.train.batch_size))
    print(threads.describe())
    # torch's thread count as it was once the job ends (a notebook, an in-process multirun)
    with using(threads.other):
        checkpointer = Checkpointer(out_dir, run_fingerprint, config.train.checkpoint_every)
        saved = checkpointer.load()
        if saved is not None:
            print(f"resuming from {checkpointer.path}")
        with _start_tracker(config, out_dir, run_name, group, tracked_config) as tracker:
            live = LiveReport(tracker, progress, grid, config.train, config.wandb.log_every)
            # stop signals, from here to results.json: during training train_grid's own StopSignals
            # acts on them at once; after it, at the next stage boundary, with the trained state
            # already in the checkpoint (train_grid saves it last)
            with StopSignals() as stop:

                def stop_point() -> None:
                    if stop.received is not None:
                        stop.stop(checkpointer.path)

                with using(threads.train):
                    trained = train_grid(
                        spec,
                        grid,
                        config.train,
                        config.seed,
                        device,
                        checkpointer,
                        saved,
                        data=config.data,
                        observer=live,
                    )
                live.ended()
                results, best = _analyse(config, spec, grid, trained, device, stop_point)
                results = replace(results, threads=threads.to_json())
                history = {
                    "steps": torch.tensor(trained.history_steps),
                    "loss": trained.loss_history.view(-1, grid.n_levels, grid.restarts),
                }
                report = _write_outputs(config, out_dir, Run(results, best, history), stop_point)
            progress.write("finished")
            checkpointer.remove()
            tracker.log_results(results, out_dir)
            if report is not None:
                tracker.log_report(report.markdown(), report.summary())
        print_summary(results, out_dir)
        if report is not None:
            print(report.markdown().rstrip())
        return results


def _start_tracker(
    config: Config, out_dir: Path, run_name: str, group: str | None, tracked_config: dict | None
) -> Tracker:
    return Tracker.start(
        config=tracked_config if tracked_config is not None else asdict(config),
        out_dir=out_dir,
        mode=config.wandb.mode.value,
        project=config.wandb.project,
        entity=config.wandb.entity,
        group=config.wandb.group or group,
        name=run_name,
        job_type=config.task.name,
        # fixed per output directory and config, so a restarted job continues the same W&B run
        resume_id=fingerprint(
            {"out_dir": str(out_dir.resolve()), "config": config_fingerprint(config)}
        )[:12],
    )


def _analyse(
    config: Config,
    spec: ModelSpec,
    grid: InstanceGrid,
    trained: TrainResult,
    device: torch.device,
    stop_point: Callable[[], None],
) -> tuple[RunResults, dict[str, Tensor]]:
    """Evaluate every instance, keep the best restart of every level and measure it: the run's
    results and the kept weights (level axis first)."""
    rows = config.eval.batch_size
    estimate = evaluate_grid(spec, trained.params, grid, config.seed, rows, device, config.data)
    stop_point()
    selection = select_best(estimate.loss, trained.finite, grid.restarts, estimate.se)
    warn_about_training(grid, selection, trained)
    best = gather_best(trained.params, selection, grid.restarts)
    kept = evaluate_kept(spec, best, grid, config.seed, rows, device, config.data)
    metrics = level_metrics(config.task.name, best, config.model.hidden_relu)
    restarts = restart_stats(
        config.task.name,
        spec.shape,
        bool(config.sweep.relative_importance),
        trained.params,
        selection.eval_loss,
        selection.best_restart,
    )
    loss_ratio = feature_loss_ratio(spec, best, grid, config.seed, rows, device, config.data)
    one_sign = one_sign_features(config.task.name, best)
    stop_point()
    results = results_summary(
        config,
        config_fingerprint(config),
        grid,
        trained,
        selection,
        kept,
        metrics,
        loss_ratio,
        one_sign,
        device,
        restarts,
    )
    return results, best


def _write_outputs(
    config: Config, out_dir: Path, run: Run, stop_point: Callable[[], None]
) -> Report | None:
    """Weights, loss record, figures, the preset's verdict and, last, results.json (with the
    digests of what was written before it); the verdict's report when there is one."""
    # matplotlib only once there is something to draw: a job refused at start starts faster
    from superposition.figures.run_figures import PLOTS_DIR, draw_run

    write_tensors(out_dir / WEIGHTS, run.weights)
    write_tensors(out_dir / HISTORY, run.history)
    stop_point()
    draw_run(
        run,
        out_dir / PLOTS_DIR,
        on_error=lambda name, err: print(
            f"warning: figure {name}.png could not be drawn ({type(err).__name__}: {err}); "
            "the results are complete without it"
        ),
    )
    stop_point()
    report = None
    if config.preset is not None:
        try:
            report = judge(config.preset, run.results, run.weights)
        except Exception as err:  # a verdict must not cost the run its results
            print(f"warning: the {config.preset} verdict could not be computed: {err}")
        if report is not None:
            write_report(out_dir, report)
            run.results.verdict = report.verdict
    stop_point()
    run.results.files = digests(out_dir)  # what finished_results checks
    write_results(out_dir, run.results)
    return report


def warn_about_training(grid: InstanceGrid, selection: Selection, trained: TrainResult) -> None:
    """One line per diverged restart or cut batch; one for a run with nothing finite at all."""
    if all(restart is None for restart in selection.best_restart):
        print(
            "warning: no restart of any level stayed finite (every loss diverged): results.json "
            "records null losses and NaN weights; lower train.lr, importance.decay or "
            "train.weight_decay"
        )
    for level, restart in selection.excluded:
        print(
            f"warning: level {level} (p={float(grid.feature_probability[level]):g}) restart "
            f"{restart}: loss turned non-finite; frozen and excluded from selection"
        )
    if trained.sampler_overflows.sum() > 0:
        print(
            f"warning: {int(trained.sampler_overflows.sum())} training batches held more active "
            "features than the sparse sampler's capacity (mean + 10 sigma + 10) and were cut"
        )


SUMMARY_MAX_LEVELS = 12


def print_summary(results: RunResults, out_dir: Path) -> None:
    if results.n_levels > SUMMARY_MAX_LEVELS:
        print(f"{results.n_levels} grid points: eval losses in {out_dir / RESULTS}")
        print_restarts_compact(results.levels)
        print(f"results written to {out_dir}")
        return
    best = ", ".join(
        f"p={level.feature_probability:g}: " + _loss_text(level) for level in results.levels
    )
    print(f"best eval loss per level: {best}")
    ties = [
        f"p={level.feature_probability:g}: {_restart_list(level.near_best_restarts)}"
        for level in results.levels
        if len(level.near_best_restarts) > 1
    ]
    if ties:
        print(
            f"restarts within {NEAR_BEST_SE:g} standard errors of the kept one (the evaluation "
            f"cannot tell them apart): {'; '.join(ties)}"
        )
    if any(level.restart_stats for level in results.levels):
        print(f"restarts per level ({results.restarts} each):")
        for level in results.levels:
            print(f"  p={level.feature_probability:g}: {shares_text(level.restart_stats)}")
    if computes_signs(results.task):  # abs: which signs of x it computes
        print_abs_summary(results.levels, results.d_hidden)
    print(f"results written to {out_dir}")


def _loss_text(level: LevelResult) -> str:
    if level.eval_loss is None:
        return "none finite"
    if level.eval_loss_se is None:
        return f"{level.eval_loss:.4g}"
    return f"{level.eval_loss:.4g} ± {level.eval_loss_se:.1g}"


def _restart_list(restarts: list[int]) -> str:
    """'restarts 0, 3, 7', or with many only their count (results.json lists them all)."""
    if len(restarts) <= LISTED_RESTARTS:
        return f"restarts {', '.join(map(str, restarts))}"
    return f"{len(restarts)} restarts (listed in results.json, near_best_restarts)"


def print_restarts_compact(levels: list[LevelResult]) -> None:
    """One line for many grid points: where only the kept restart reached its loss, and where
    fewer than half of the restarts show a geometry the kept one shows."""
    stats = [level.restart_stats for level in levels if level.restart_stats]
    if not stats:
        return
    alone = sum(1 for s in stats if s["finite"] and s["within_1pct"] == 1)
    rare = sum(
        1
        for s in stats
        if any(g["kept"] and 2 * g["restarts"] < g["of"] for g in s["geometry"].values())
    )
    print(
        f"restarts: at {alone} of {len(stats)} grid points only the kept restart is within 1 % of "
        f"the best loss; at {rare} fewer than half of the restarts show the kept one's geometry "
        "(levels[i].restart_stats)"
    )


def print_abs_summary(levels: list[LevelResult], d_hidden: int) -> None:
    """Which signs of |x| the kept models compute, and their loss over a constant model's; a
    warning where important features are computed for one sign only (issue 10's minimum)."""
    cells = []
    for level in levels:
        m, p = level.metrics, level.feature_probability
        share = _loss_over_constant(level)
        if share is None or m.get("features_computed_both_signs") is None:
            cells.append(f"p={p:g}: –")
            continue
        both, one = m["features_computed_both_signs"], m["features_computed_one_sign"]
        cells.append(f"p={p:g}: {both}/{one}, {share:.3f}")
    print(
        "features computed for both signs / one sign only, and loss over a constant model's: "
        + "; ".join(cells)
    )
    n_important = important_feature_count(d_hidden)
    for level in levels:
        important = set(important_features(level.importance, n_important))
        bad = sorted(important.intersection(level.one_sign_features or []))
        if bad:
            share = _loss_over_constant(level)
            loss = "" if share is None else f", the loss {share:.2f} of a constant model's"
            print(
                f"warning: p={level.feature_probability:g}: features "
                f"{', '.join(map(str, bad))} (of the {n_important} most important) are computed "
                f"for one sign of x only{loss}; |x| = ReLU(x) + ReLU(-x) needs both: see "
                "plots/feature_loss.png, and try more train.steps or train.restarts"
            )


def _loss_over_constant(level: LevelResult) -> float | None:
    return level.loss_ratios.get("constant")
