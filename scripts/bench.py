#!/usr/bin/env python
"""The yardstick of issue 5: the project's trainer against the course's plain training loop.

    python scripts/bench.py                 # full run, ~5-10 minutes on a 2-core CPU
    python scripts/bench.py --quick         # fewer steps, < 2 minutes on a 2-core CPU
    python scripts/bench.py --json out.json --device cuda

Both sides train the same workloads (same grid, batch, learning rate and steps) in this process,
interleaved: each repeat runs reference and project back to back, the order alternating from one
repeat to the next (ABBA), after an untimed warm-up of each. The figures are medians over repeats.

- reference: the loop as the ARENA course writes it (ReferenceToyModel): stacked nn.Parameters,
  einops einsum forward, two torch.rand and a torch.where per step, autograd, torch.optim.Adam, the
  learning rate set every step, loss.item() every 50 steps.
- project: engine.train.train_grid, called as superposition.run calls it (no checkpointer).

Peak memory is measured in a fresh process per side and workload (see measure_peak_memory); the
final parameters of every timed run are scored on the same held-out batch
(analysis.evaluate.evaluate_grid), so a speed-up that learns less can be seen. A last section
trains W1 at 448 and 4,480 instances under TrainConfig(memory_budget_mb=...) and reports the peak
next to the budget (the trainer chunks the instance axis to stay under it).

The package is imported as installed (pip install -e .); scripts/course_check.py imports
ReferenceToyModel from here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import torch
from einops import einsum, reduce
from torch import Tensor, nn
from tqdm.auto import tqdm

from superposition.analysis.evaluate import evaluate_grid
from superposition.analysis.select import select_best
from superposition.config import ConfigError, Device, TrainConfig
from superposition.engine import bytes_per_instance
from superposition.engine.cpus import cpu_allocation
from superposition.engine.device import resolve_device
from superposition.engine.threads import largest_block, plan_threads, using
from superposition.engine.train import TrainResult, history_steps, train_grid
from superposition.grid import InstanceGrid, sparsity_grid
from superposition.tasks.model import InitScale, ModelSpec, init_scales

# The tasks by name, as ModelSpec(task=...) takes them: plain strings (the only place that knows)
IDENTITY, ABS = "identity", "abs"

SIDES = ("reference", "project")
LOG_EVERY = 50
EVAL_SEED = 2024
MiB = 2**20
M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD = 64 * 1024
FLOP_COUNT = (
    "FLOPs/step = 3 (forward + backward ~ 2x forward) x 2 (multiply + add) x batch x instances x "
    "MACs per row of the model's matmuls (2 x n_features x d_hidden for both tasks: x->hidden, "
    "hidden->out); elementwise work, sampling and Adam are not counted. The input gradient is "
    "not needed, so the true matmul count is ~5/6 of this."
)
MEMORY_METHOD = (
    "each figure from a fresh process (multiprocessing forkserver/spawn), after a small warm-up "
    "run of the same side. CPU 'peak': increase of the peak RSS over the RSS just before the run "
    "(peak reset via /proc/self/clear_refs, read from VmHWM; fallback getrusage ru_maxrss), with "
    "glibc's default malloc: what a job sees, including freed memory that malloc keeps. 'mmap': "
    "the same with mallopt(M_MMAP_THRESHOLD, 64 KiB), so freed tensors return to the OS at once: "
    "close to the live tensor peak. CUDA 'peak': torch.cuda.max_memory_allocated over the "
    "allocation before the run."
)

FEATURE_PROBABILITY = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


@dataclass(frozen=True)
class Workload:
    name: str
    task: str  # IDENTITY or ABS
    n_features: int
    d_hidden: int
    feature_probability: tuple[float, ...]
    restarts: int
    decay: float  # importance of feature i is decay**i (1.0: uniform)
    target: float  # the speed-up over the reference that issue 5 asks for

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(task=self.task, n_features=self.n_features, d_hidden=self.d_hidden)

    @property
    def grid(self) -> InstanceGrid:
        return sparsity_grid(
            list(self.feature_probability), self.n_features, self.decay, self.restarts
        )

    @property
    def n_instances(self) -> int:
        return self.grid.n_instances

    def flops_per_step(self, batch_size: int) -> float:
        macs_per_row = 2 * self.n_features * self.d_hidden  # x -> hidden, hidden -> out
        return 3 * 2 * batch_size * self.n_instances * macs_per_row

    def describe(self) -> str:
        return f"{self.task} {self.n_features}->{self.d_hidden} x{self.n_instances}"


WORKLOADS = (
    Workload("W1", IDENTITY, 5, 2, FEATURE_PROBABILITY, 64, 0.9, 3.0),
    Workload("W2", ABS, 100, 40, FEATURE_PROBABILITY, 4, 0.8, 2.0),
    Workload("W3", IDENTITY, 200, 20, (0.01, 0.003, 0.001, 0.0003), 4, 1.0, 10.0),
)
# --tiny: the same shapes with fewer restarts, for smoke tests
TINY_RESTARTS = {"W1": 2, "W2": 1, "W3": 1}


@dataclass(frozen=True)
class Settings:
    steps: int
    repeats: int
    warmup_steps: int
    batch_size: int
    lr: float
    eval_rows: int
    memory_steps: int
    memory_budget_mb: float
    memory_restarts: tuple[int, int]
    matmul_size: int
    loss_tolerance: float
    device: str
    # the trainer's train.threads (0: the job's automatic choice)
    trainer_threads: int = 0


# ---------------------------------------------------------------------------------------------
# The reference: the course's training loop, kept as the course writes it (not optimised).
# ---------------------------------------------------------------------------------------------


def constant_lr(step: int, steps: int) -> float:
    return 1.0


def course_init(init: InitScale, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A stacked weight drawn with torch.randn / torch.rand, as the course's initialisers draw."""
    if init.distribution == "normal":
        return init.scale * torch.randn(shape, device=device)
    return init.scale * (2 * torch.rand(shape, device=device) - 1)


class ReferenceToyModel(nn.Module):
    """The course's ToyModel (identity; NeuronModel with spec.hidden_relu) and
    NeuronComputationModel (abs), instances stacked first.

    Activations are (batch, instance, feature), as in the course. The weights are named and shaped
    as spec.param_shapes() says and start at the scale tasks.model.init_scales gives for `spec`
    (for abs by default the course's own: its kaiming_uniform_ on the stacked tensor reads the
    fan-in as d_hidden · n_features), so both sides start from the same distribution and the
    held-out losses compare training, not initialisation.
    """

    def __init__(
        self,
        spec: ModelSpec,
        feature_probability: Annotated[Tensor, "instance"],
        importance: Annotated[Tensor, "instance feature"],
        device: torch.device,
    ):
        super().__init__()
        self.spec, self.n_inst = spec, feature_probability.shape[0]
        shape = (self.n_inst, spec.n_features)
        self.feature_probability = (
            feature_probability.float().to(device).unsqueeze(-1).broadcast_to(shape)
        )
        self.importance = importance.float().to(device).broadcast_to(shape)
        param_shapes = spec.param_shapes()
        for name, init in init_scales(spec).items():
            weight = course_init(init, (self.n_inst, *param_shapes[name]), device)
            setattr(self, name, nn.Parameter(weight))
        self.b_final = nn.Parameter(torch.zeros(shape, device=device))
        self.loss_log: list[float] = []

    def forward(
        self, features: Annotated[Tensor, "batch instance feature"]
    ) -> Annotated[Tensor, "batch instance feature"]:
        if self.spec.task == IDENTITY:
            h = einsum(features, self.W, "... inst feats, inst hidden feats -> ... inst hidden")
            if self.spec.hidden_relu:  # the course's NeuronModel
                h = torch.relu(h)
            out = einsum(h, self.W, "... inst hidden, inst hidden feats -> ... inst feats")
        else:
            h = torch.relu(
                einsum(features, self.W1, "... inst feats, inst hidden feats -> ... inst hidden")
            )
            out = einsum(h, self.W2, "... inst hidden, inst feats hidden -> ... inst feats")
        return torch.relu(out + self.b_final)

    def generate_batch(self, batch_size: int) -> Annotated[Tensor, "batch instance feature"]:
        shape = (batch_size, *self.feature_probability.shape)
        device = self.b_final.device
        feat_mag = torch.rand(shape, device=device)
        if self.spec.task == ABS:
            feat_mag = 2 * feat_mag - 1
        feat_seeds = torch.rand(shape, device=device)
        return torch.where(feat_seeds < self.feature_probability, feat_mag, 0.0)

    def calculate_loss(
        self,
        out: Annotated[Tensor, "batch instance feature"],
        batch: Annotated[Tensor, "batch instance feature"],
    ) -> Tensor:
        target = batch.abs() if self.spec.task == ABS else batch
        error = self.importance * ((target - out) ** 2)
        return reduce(error, "batch inst feats -> inst", "mean").sum()

    def optimize(
        self,
        batch_size: int = 1024,
        steps: int = 10_000,
        log_freq: int = LOG_EVERY,
        lr: float = 1e-3,
        lr_scale: Callable[[int, int], float] = constant_lr,
    ) -> None:
        """The course's loop; the loss is read at the steps the project records it at."""
        optimizer = torch.optim.Adam(list(self.parameters()), lr=lr)
        logged = set(history_steps(steps, log_freq))
        progress_bar = tqdm(range(steps))
        for step in progress_bar:
            step_lr = lr * lr_scale(step, steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            optimizer.zero_grad()
            batch = self.generate_batch(batch_size)
            out = self(batch)
            loss = self.calculate_loss(out, batch)
            loss.backward()
            optimizer.step()
            if step in logged:
                self.loss_log.append(loss.item() / self.n_inst)
                progress_bar.set_postfix(loss=self.loss_log[-1], lr=step_lr)

    def trained_params(self) -> dict[str, Tensor]:
        """Parameters under the names superposition.tasks.model uses, on the CPU."""
        return {name: p.detach().cpu() for name, p in self.named_parameters()}


def run_reference(
    workload: Workload, steps: int, batch_size: int, lr: float, seed: int, device: torch.device
) -> ReferenceToyModel:
    torch.manual_seed(seed)
    grid = workload.grid
    model = ReferenceToyModel(
        workload.spec, grid.instance_probability(), grid.instance_importance(), device
    )
    model.optimize(batch_size=batch_size, steps=steps, lr=lr)
    return model


def run_project(
    workload: Workload,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    memory_budget_mb: float = 0.0,
    threads: int | None = None,
) -> TrainResult:
    cfg = TrainConfig(
        restarts=workload.restarts,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        log_every=LOG_EVERY,
        memory_budget_mb=memory_budget_mb,
    )
    with using(threads or job_threads(workload, batch_size)):
        return train_grid(workload.spec, workload.grid, cfg, seed, device)


def job_threads(workload: Workload, batch_size: int, requested: int = 0) -> int:
    """The training thread count a job with train.threads=requested would choose here and now
    (engine/threads.py)."""
    return plan_threads(requested, largest_block(workload.spec, workload.grid, batch_size)).train


def run_side(side: str, workload: Workload, steps: int, settings: Settings, seed: int, **kw):
    """One training run; returns (trained parameters on the CPU, chunk size or None)."""
    device = torch.device(settings.device)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # progress bars
        if side == "reference":
            model = run_reference(workload, steps, settings.batch_size, settings.lr, seed, device)
            return model.trained_params(), None
        result = run_project(workload, steps, settings.batch_size, settings.lr, seed, device, **kw)
        return result.params, result.chunk_size


# ---------------------------------------------------------------------------------------------
# Speed and held-out loss
# ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int, device: torch.device, reps: int = 7) -> dict:
    """Median GFLOP/s of a dense n x n fp32 matmul (TF32 as torch's default: off for matmul)."""
    a, b, c = (torch.randn(n, n, device=device) for _ in range(3))
    for _ in range(2):
        torch.matmul(a, b, out=c)
    seconds = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"n": n, "seconds": seconds, "median_s": median, "gflops": 2 * n**3 / median / 1e9}


def held_out_loss(workload: Workload, params: dict[str, Tensor], settings: Settings) -> dict:
    """Loss of every instance on the project's held-out batch (the same rows for both sides), and
    of the restart a job would keep at every grid point (analysis.select.select_best)."""
    grid = workload.grid
    loss = evaluate_grid(
        workload.spec, params, grid, EVAL_SEED, settings.eval_rows, torch.device(settings.device)
    ).loss
    selection = select_best(loss, torch.isfinite(loss), grid.restarts)
    best = selection.eval_loss.min(dim=1).values  # +inf where no restart stayed finite
    return {"mean": loss.mean().item(), "best_of_restarts_mean": best.mean().item()}


def timed_run(side: str, workload: Workload, settings: Settings, seed: int):
    """(seconds, trained parameters) of one run; the trainer's thread count is chosen before
    the clock starts (a job chooses it once, not per training)."""
    device = torch.device(settings.device)
    threads = job_threads(workload, settings.batch_size, settings.trainer_threads)
    kw = {"threads": threads} if side == "project" else {}
    gc.collect()
    synchronize(device)
    t0 = time.perf_counter()
    params, _chunk = run_side(side, workload, settings.steps, settings, seed, **kw)
    synchronize(device)
    return time.perf_counter() - t0, params


def time_sides(workload: Workload, settings: Settings, log: Callable[[str], None]):
    """Seconds and held-out losses of every timed run, by side (ABBA order after a warm-up)."""
    for side in SIDES:  # warm-up, not timed
        run_side(side, workload, settings.warmup_steps, settings, seed=10_000)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    losses: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(settings.repeats):
        for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
            elapsed, params = timed_run(side, workload, settings, seed=repeat)
            seconds[side].append(elapsed)
            losses[side].append(held_out_loss(workload, params, settings))
            log(f"  {workload.name} repeat {repeat + 1}/{settings.repeats} {side}: {elapsed:.2f} s")
    return seconds, losses


def side_figures(
    workload: Workload, settings: Settings, seconds: list[float], losses: list[dict], memory: dict
) -> dict:
    median = statistics.median(seconds)
    steps_done = workload.n_instances * settings.steps
    return {
        "seconds": seconds,
        "median_s": median,
        "instance_steps_per_s": steps_done / median,
        "gflops": workload.flops_per_step(settings.batch_size) * settings.steps / median / 1e9,
        "peak_memory_mb": memory["peak_mb"],
        "peak_memory_mmap_mb": memory["peak_mmap_mb"],
        "memory": memory,
        "eval_loss": statistics.median(loss["mean"] for loss in losses),
        "eval_loss_best_of_restarts": statistics.median(
            loss["best_of_restarts_mean"] for loss in losses
        ),
        "eval_loss_per_repeat": [loss["mean"] for loss in losses],
    }


def compare_sides(result: dict, workload: Workload, tolerance: float) -> None:
    """Add the project-over-reference figures and the verdict's inputs to `result`."""
    ref, proj = result["reference"], result["project"]
    result["speedup"] = proj["instance_steps_per_s"] / ref["instance_steps_per_s"]
    # on a shared machine the fastest run is the least disturbed one: a check on the median
    result["speedup_of_fastest"] = min(ref["seconds"]) / min(proj["seconds"])
    every_run = ref["seconds"] + proj["seconds"]
    result["spread"] = max(every_run) / min(every_run)
    result["loss_ratio"] = proj["eval_loss"] / ref["eval_loss"]
    result["learns_as_well"] = result["loss_ratio"] <= 1 + tolerance
    result["target_met"] = result["speedup"] >= workload.target and result["learns_as_well"]


def bench_workload(workload: Workload, settings: Settings, log: Callable[[str], None]) -> dict:
    seconds, losses = time_sides(workload, settings, log)
    result: dict[str, Any] = {
        "task": workload.task,
        "n_features": workload.n_features,
        "d_hidden": workload.d_hidden,
        "feature_probability": list(workload.feature_probability),
        "restarts": workload.restarts,
        "n_instances": workload.n_instances,
        "importance_decay": workload.decay,
        "steps": settings.steps,
        "flops_per_step": workload.flops_per_step(settings.batch_size),
        "target_speedup": workload.target,
    }
    for side in SIDES:
        log(f"  {workload.name} peak memory of {side}")
        memory = measure_peak_memory(side, workload, settings, settings.memory_steps)
        result[side] = side_figures(workload, settings, seconds[side], losses[side], memory)
    compare_sides(result, workload, settings.loss_tolerance)
    return result


# ---------------------------------------------------------------------------------------------
# Peak memory, each figure from a fresh process
# ---------------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRss:
    """Increase of the peak resident size from now on: VmHWM, reset through /proc/self/clear_refs
    (Linux >= 4.0); elsewhere getrusage's ru_maxrss, a lower bound (that peak cannot be reset)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset VmHWM to the current RSS
            self.exact = _proc_status_kb("VmHWM") is not None
        except OSError:
            self.exact = False
        self.method = "VmHWM after clear_refs" if self.exact else "ru_maxrss (lower bound)"
        self.base = self._bytes("VmRSS")

    def _bytes(self, key: str) -> int:
        if self.exact:
            return _proc_status_kb(key) * 1024
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def increase_mb(self) -> float:
        return max(0, self._bytes("VmHWM") - self.base) / MiB


def _fix_mmap_threshold(threshold: int) -> bool:
    """glibc: serve every allocation of at least `threshold` bytes by mmap, so that freed tensors
    go back to the OS at once and the RSS follows the live tensors (no dynamic threshold)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _peak_memory_child(
    side: str,
    workload: Workload,
    settings: Settings,
    steps: int,
    memory_budget_mb: float,
    mmap_threshold: int,
) -> dict | None:
    """Runs in a fresh process: peak memory one training run adds (None: mallopt unavailable)."""
    if mmap_threshold and not _fix_mmap_threshold(mmap_threshold):
        return None
    device = torch.device(settings.device)
    kw = {"memory_budget_mb": memory_budget_mb} if side == "project" else {}
    # lazy initialisations (thread pools, kernels, CUDA context) before the measurement
    run_side(side, replace(workload, restarts=1), min(2, steps), settings, seed=0, **kw)
    gc.collect()
    cuda_base = 0
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    rss = PeakRss()
    _params, chunk = run_side(side, workload, steps, settings, seed=0, **kw)
    synchronize(device)
    out = {"rss_increase_mb": rss.increase_mb(), "rss_method": rss.method, "chunk_size": chunk}
    if device.type == "cuda":
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(device) - cuda_base) / MiB
    return out


def _fresh_process_context():
    """forkserver where available (no torch thread pool inherited), else spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # imported once in the server (torch.optim imports torch._dynamo on first use): children
    # start in milliseconds
    ctx.set_forkserver_preload(["__main__", "torch", "torch._dynamo", "superposition.engine.train"])
    return ctx


def start_fresh_process_server() -> None:
    """Start the fork server now; it imports in the background until the first child is asked."""
    if _fresh_process_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _nothing() -> None:
    return None


def in_fresh_process(fn: Callable, *args: Any) -> Any:
    """fn(*args) in a new process; an exception there is raised here (with the child's traceback).

    One at a time: two children at once would oversubscribe the cores (OpenMP spins)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_fresh_process_context()) as pool:
        return pool.submit(fn, *args).result()


def measure_peak_memory(
    side: str, workload: Workload, settings: Settings, steps: int, memory_budget_mb: float = 0.0
) -> dict:
    """Peak memory of one run, each figure from its own fresh process.

    peak_mb: CUDA: max_memory_allocated; CPU: RSS increase with glibc's default malloc (what a
    user's job sees; freed memory may stay resident). peak_mmap_mb: RSS increase with allocations
    of >= 64 KiB served by mmap (freed tensors leave at once: close to the live tensor memory);
    None where mallopt is unavailable.
    """
    args = (side, workload, settings, steps, memory_budget_mb)
    default = in_fresh_process(_peak_memory_child, *args, 0)
    mmap = in_fresh_process(_peak_memory_child, *args, MMAP_THRESHOLD)
    return {
        "peak_mb": default.get("cuda_peak_mb", default["rss_increase_mb"]),
        "peak_mmap_mb": mmap["rss_increase_mb"] if mmap is not None else None,
        "chunk_size": default["chunk_size"],
        "default_malloc": default,
        "mmap_malloc": mmap,
    }


def _under(peak_mb: float | None, budget_mb: float) -> bool | None:
    return peak_mb <= budget_mb if budget_mb and peak_mb is not None else None


def budget_row(workload: Workload, settings: Settings, budget_mb: float) -> dict:
    """The project's peak on `workload` under a memory budget (0: none), next to its plan."""
    memory = measure_peak_memory("project", workload, settings, settings.memory_steps, budget_mb)
    chunk = memory["chunk_size"]
    probabilities = workload.grid.feature_probability.float().tolist()
    per_instance = bytes_per_instance(
        workload.spec, TrainConfig().engine, settings.batch_size, probabilities
    )
    return {
        "n_instances": workload.n_instances,
        "memory_budget_mb": budget_mb,
        "chunk_size": chunk,
        "n_chunks": -(-workload.n_instances // chunk),
        "planned_chunk_mb": chunk * per_instance / MiB,
        "peak_memory_mb": memory["peak_mb"],
        "peak_memory_mmap_mb": memory["peak_mmap_mb"],
        "under_budget": _under(memory["peak_mb"], budget_mb),
        "under_budget_mmap": _under(memory["peak_mmap_mb"], budget_mb),
        "memory": memory,
    }


def bench_memory(settings: Settings, w1: Workload) -> dict:
    """Peak of the project's trainer on W1 at two sizes under a memory budget (it chunks), and at
    the larger size without one."""
    budget = settings.memory_budget_mb
    small, large = settings.memory_restarts
    cases = [(small, budget), (large, budget), (large, 0.0)]
    rows = [budget_row(replace(w1, restarts=r), settings, b) for r, b in cases]
    return {"memory_budget_mb": budget, "steps": settings.memory_steps, "rows": rows}


def profile_project(workload: Workload, settings: Settings, steps: int) -> str:
    """torch.profiler table of the project's trainer on one workload, by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if settings.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    run_side("project", workload, 2, settings, seed=0)
    with profile(activities=activities) as prof:
        run_side("project", workload, steps, settings, seed=0)
    if settings.device != "cuda":
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    try:
        return prof.key_averages().table(sort_by="self_device_time_total", row_limit=20)
    except (AttributeError, KeyError):  # torch before 2.4
        return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20)


# ---------------------------------------------------------------------------------------------
# Under load: k CPU-bound neighbour processes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def neighbours(k: int) -> Any:
    """k CPU-bound processes (a Python busy loop each, like another job's or a notebook's
    compute) for the duration of the block; yields their process ids."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        time.sleep(0.5 if k else 0.0)  # let them take their CPUs
        yield [process.pid for process in spinning]
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def throughputs_under_load(
    workload: Workload, settings: Settings, k: int, log: Callable[[str], None]
) -> dict[str, list[float]]:
    """Instance-steps per second of every timed run of each side with k neighbours (ABBA)."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with neighbours(k) as pids:
        rates["neighbour_pids"] = pids
        rates["trainer_threads"] = [
            job_threads(workload, settings.batch_size, settings.trainer_threads)
        ]
        for repeat in range(settings.repeats):
            for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
                elapsed, _ = timed_run(side, workload, settings, seed=repeat)
                rates[side].append(workload.n_instances * settings.steps / elapsed)
                log(f"  {workload.name} k={k} repeat {repeat + 1} {side}: {elapsed:.2f} s")
    return rates


def bench_contention(
    workloads: list[Workload], settings: Settings, loads: list[int], log: Callable[[str], None]
) -> dict[str, Any]:
    """Each side's median throughput with k = 0, 1, 3, ... neighbours, and as a fraction of its
    own quiet (k = 0) throughput. The trainer chooses its threads as a job does (at the start
    of every run); the course loop keeps torch's default (one thread per core)."""
    for side in SIDES:  # warm-up, not timed
        run_side(side, workloads[0], settings.warmup_steps, settings, seed=10_000)
    report: dict[str, Any] = {"cpus": cpu_allocation(pin=False).cpus, "loads": loads}
    for workload in workloads:
        rows = {}
        for k in loads:
            rates = throughputs_under_load(workload, settings, k, log)
            rows[k] = {side: statistics.median(rates[side]) for side in SIDES}
            rows[k]["trainer_threads"] = rates.pop("trainer_threads")[0]
            rows[k]["neighbour_pids"] = rates.pop("neighbour_pids")
            rows[k]["runs"] = rates
        quiet = rows[loads[0]]
        for k, row in rows.items():
            for side in SIDES:
                row[f"{side}_of_quiet"] = row[side] / quiet[side]
            row["fair_share"] = 1 / (k + 1)
            row["project_over_reference"] = row["project"] / row["reference"]
            row["project_keeps_fair_share"] = row["project_of_quiet"] >= row["fair_share"]
        report[workload.name] = {"describe": workload.describe(), "by_load": rows}
    return report


def contention_table(report: dict) -> list[str]:
    lines = [
        f"Under load ({report['cpus']} CPUs; k CPU-bound neighbours; throughput in "
        "instance-steps/s, median; fraction of the side's own quiet throughput)",
        "| workload | k | course loop | of quiet | trainer (threads) | of quiet | "
        "fair share 1/(k+1) | trainer / course loop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, w in report.items():
        if not isinstance(w, dict) or "by_load" not in w:
            continue
        for k, row in w["by_load"].items():
            lines.append(
                f"| {name} | {k} | {row['reference']:,.0f} | {row['reference_of_quiet']:.2f} | "
                f"{row['project']:,.0f} ({row['trainer_threads']}) | "
                f"{row['project_of_quiet']:.2f} | "
                f"{row['fair_share']:.2f} {'ok' if row['project_keeps_fair_share'] else 'BELOW'} | "
                f"{row['project_over_reference']:.1f}x |"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[value]


def speed_table(report: dict) -> list[str]:
    s, peak = report["settings"], report["matmul_peak"]
    lines = [
        "",
        f"device {report['device_name']}, torch {report['torch']}, "
        f"{report['threads']} threads; batch {s['batch_size']}, lr {s['lr']}, "
        f"median of {s['repeats']} repeats (ABBA order), warm-up {s['warmup_steps']} steps",
        f"dense fp32 matmul peak ({peak['n']}x{peak['n']}, median): {peak['gflops']:.1f} GFLOP/s",
        "",
        "speed (instance-steps per second, median; GFLOP/s of the matmuls, see 'FLOPs' below)",
        "('fastest': the ratio of the fastest runs; 'spread': slowest / fastest run of the row)",
        f"{'':4}{'workload':24}{'steps':>6}{'reference':>11}{'project':>10}{'proj/ref':>9}"
        f"{'fastest':>8}{'spread':>7}{'GFLOP/s ref':>12}{'proj':>8}{'% peak':>8}",
    ]
    for name, w in report["workloads"].items():
        ref, proj = w["reference"], w["project"]
        desc = f"{w['task']} {w['n_features']}->{w['d_hidden']} x{w['n_instances']}"
        lines.append(
            f"{name:4}{desc:24}{w['steps']:>6}{ref['instance_steps_per_s']:>11.4g}"
            f"{proj['instance_steps_per_s']:>10.4g}{w['speedup']:>8.2f}x"
            f"{w['speedup_of_fastest']:>7.2f}x{w['spread']:>7.1f}"
            f"{ref['gflops']:>12.3g}{proj['gflops']:>8.3g}"
            f"{100 * proj['gflops'] / peak['gflops']:>7.2f}%"
        )
    return lines


def memory_and_loss_table(report: dict) -> list[str]:
    lines = [
        "",
        "memory (MiB added by one run: 'peak' and 'mmap', see 'memory' below) and held-out loss",
        "(mean over instances, and mean over grid points of the best restart; median of repeats)",
        f"{'':4}{'peak ref':>9}{'proj':>7}{'mmap ref':>9}{'proj':>7}{'loss ref':>11}{'proj':>11}"
        f"{'proj/ref':>9}{'best ref':>11}{'proj':>11}",
    ]
    for name, w in report["workloads"].items():
        ref, proj = w["reference"], w["project"]
        lines.append(
            f"{name:4}{_mib(ref['peak_memory_mb']):>9}{_mib(proj['peak_memory_mb']):>7}"
            f"{_mib(ref['peak_memory_mmap_mb']):>9}{_mib(proj['peak_memory_mmap_mb']):>7}"
            f"{ref['eval_loss']:>11.4g}{proj['eval_loss']:>11.4g}{w['loss_ratio']:>9.3f}"
            f"{ref['eval_loss_best_of_restarts']:>11.4g}{proj['eval_loss_best_of_restarts']:>11.4g}"
        )
    return lines


def budget_table(memory: dict) -> list[str]:
    lines = [
        "",
        f"memory budget: project trainer on W1, {memory['steps']} steps, "
        f"TrainConfig(memory_budget_mb={memory['memory_budget_mb']:g})",
        f"{'instances':>10}{'budget MiB':>12}{'chunk':>7}{'chunks':>8}{'planned MiB':>13}"
        f"{'peak':>8}{'mmap':>8}  under budget (peak / mmap)",
    ]
    for row in memory["rows"]:
        budget = f"{row['memory_budget_mb']:g}" if row["memory_budget_mb"] else "none"
        under = (
            f"{_yes(row['under_budget'])} / {_yes(row['under_budget_mmap'])}"
            if row["memory_budget_mb"]
            else "- (no budget: one chunk)"
        )
        lines.append(
            f"{row['n_instances']:>10}{budget:>12}{row['chunk_size']:>7}{row['n_chunks']:>8}"
            f"{row['planned_chunk_mb']:>13.1f}{_mib(row['peak_memory_mb']):>8}"
            f"{_mib(row['peak_memory_mmap_mb']):>8}  {under}"
        )
    return lines


def format_report(report: dict) -> str:
    lines = speed_table(report) + memory_and_loss_table(report) + budget_table(report["memory"])
    lines += ["", f"FLOPs: {FLOP_COUNT}", f"memory: {MEMORY_METHOD}", "", "verdicts (issue 5)"]
    return "\n".join(lines + report["verdicts"])


def verdict(name: str, w: dict, tolerance: float) -> str:
    met = "MET" if w["target_met"] else "NOT MET"
    learns = (
        f"learns as well (within {100 * tolerance:g}%)"
        if w["learns_as_well"]
        else f"learns LESS (over {100 * tolerance:g}% worse)"
    )
    return (
        f"{name}: project is {w['speedup']:.2f}x the reference (target >= {w['target_speedup']:g}x)"
        f" -> {met}; held-out loss proj/ref {w['loss_ratio']:.3f}: {learns}"
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (< 2 min on 2 cores)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (few restarts)")
    parser.add_argument("--device", choices=[d.value for d in Device], default="auto")
    parser.add_argument("--steps", type=int, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, help="timed repeats per side (median)")
    parser.add_argument("--warmup-steps", type=int, help="steps of the untimed warm-up run")
    parser.add_argument("--eval-rows", type=int, help="rows of the held-out batch")
    parser.add_argument("--memory-steps", type=int, help="steps of the memory runs")
    parser.add_argument("--memory-budget-mb", type=float, help="budget of the memory section")
    parser.add_argument(
        "--loss-tolerance", type=float, default=0.05, help="allowed held-out loss excess"
    )
    parser.add_argument("--only", help="comma-separated workloads to run, e.g. W1,W3")
    parser.add_argument("--profile", action="store_true", help="also profile the project on W1")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--contention",
        action="store_true",
        help="instead: each workload's throughput with k CPU-bound neighbour processes",
    )
    parser.add_argument(
        "--trainer-threads",
        type=int,
        default=0,
        help="the trainer's thread count, as train.threads (default 0: a job's automatic choice)",
    )
    parser.add_argument(
        "--neighbours",
        default="0,1,3",
        help="the k of --contention, comma-separated, the first the quiet baseline (default 0,1,3)",
    )
    args = parser.parse_args(argv)
    try:
        args.loads = [int(k) for k in args.neighbours.split(",")]
    except ValueError:
        parser.error(f"--neighbours must be comma-separated integers, got {args.neighbours}")
    if any(k < 0 for k in args.loads) or args.loads[0] != 0:
        parser.error(
            f"--neighbours must start with 0 and hold no negative k, got {args.neighbours}"
        )
    for key in ("steps", "repeats", "warmup_steps", "eval_rows", "memory_steps"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if args.trainer_threads < 0:
        parser.error(f"--trainer-threads must be >= 0, got {args.trainer_threads}")
    if args.memory_budget_mb is not None and not args.memory_budget_mb > 0:
        parser.error(f"--memory-budget-mb must be > 0, got {args.memory_budget_mb}")
    return args


def make_settings(args: argparse.Namespace, device: torch.device) -> Settings:
    defaults = {
        "steps": 40 if args.quick else 300,
        "repeats": 3,
        "warmup_steps": 10,
        "eval_rows": 4096 if args.quick else 16384,
        "memory_steps": 2 if args.quick else 5,
        "memory_budget_mb": 64.0,
    }
    if args.tiny:
        defaults.update(eval_rows=1024, memory_budget_mb=2.0)
    value = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()}
    return Settings(
        steps=value["steps"],
        repeats=value["repeats"],
        warmup_steps=min(value["warmup_steps"], value["steps"]),
        batch_size=128 if args.tiny else 1024,
        lr=1e-3,
        eval_rows=value["eval_rows"],
        memory_steps=value["memory_steps"],
        memory_budget_mb=value["memory_budget_mb"],
        memory_restarts=(2, 20) if args.tiny else (64, 640),
        matmul_size=256 if args.tiny else 2048,
        loss_tolerance=args.loss_tolerance,
        device=device.type,
        trainer_threads=args.trainer_threads,
    )


def select_workloads(args: argparse.Namespace) -> list[Workload]:
    """The workloads to time (--tiny: fewer restarts; --only: some); ValueError on unknown names."""
    workloads = [replace(w, restarts=TINY_RESTARTS[w.name]) if args.tiny else w for w in WORKLOADS]
    if not args.only:
        return workloads
    wanted = {name.strip().upper() for name in args.only.split(",")}
    unknown = wanted - {w.name for w in workloads}
    if unknown:
        raise ValueError(f"--only names unknown workloads {sorted(unknown)}")
    return [w for w in workloads if w.name in wanted]


def run_bench(
    workloads: list[Workload],
    w1: Workload,
    settings: Settings,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, Any]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    report: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "trainer_threads": {
            w.name: job_threads(w, settings.batch_size, settings.trainer_threads) for w in workloads
        },
        "settings": asdict(settings),
        "flop_count": FLOP_COUNT,
        "memory_method": MEMORY_METHOD,
    }
    log(f"bench: {device.type}, steps {settings.steps}, repeats {settings.repeats}")
    # the fork server imports torch while this process initialises lazily (first optimiser,
    # kernels); both are done before anything is timed
    start_fresh_process_server()
    for side in SIDES:
        run_side(side, workloads[0], 1, settings, seed=10_000)
    in_fresh_process(_nothing)
    report["matmul_peak"] = matmul_peak(settings.matmul_size, device)
    report["workloads"] = {}
    for workload in workloads:
        log(f"bench: {workload.name} {workload.describe()}")
        report["workloads"][workload.name] = bench_workload(workload, settings, log)
    log("bench: memory section")
    report["memory"] = bench_memory(settings, w1)
    report["verdicts"] = [
        verdict(name, w, settings.loss_tolerance) for name, w in report["workloads"].items()
    ]
    return report


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(Device(args.device))
        workloads = select_workloads(args)
    except (ConfigError, ValueError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    settings = make_settings(args, device)
    w1 = replace(WORKLOADS[0], restarts=TINY_RESTARTS["W1"]) if args.tiny else WORKLOADS[0]
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    if args.contention:
        if args.steps is None:
            settings = replace(settings, steps=20 if args.quick else 60)
        log(f"bench: contention, k = {args.loads}, steps {settings.steps}")
        report = {"contention": bench_contention(workloads, settings, args.loads, log)}
        report["wall_s"] = time.perf_counter() - started
        print("\n".join(contention_table(report["contention"])))
        if args.json:
            write_json(args.json, report)
        return 0
    report = run_bench(workloads, w1, settings, device, log)
    report["wall_s"] = time.perf_counter() - started
    print(format_report(report))
    print(f"\nbench took {report['wall_s']:.0f} s")
    if args.profile:
        print(f"\nprofile: project trainer, {w1.name}, 20 steps (self time, top 20)")
        print(profile_project(w1, settings, 20))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
