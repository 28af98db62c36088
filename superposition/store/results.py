"""results.json as one typed contract: RunResults (the run) and LevelResult (one grid point).

This module is the only reader and writer of results.json's keys; everything else takes a
RunResults (or a Run: results, weights and loss record together, as load_run reads them).

Formats:
- 3 (written now): the keys of format 2, plus the evaluation's precision ("eval_method",
  "eval_loss_se", "restart_eval_loss_se", "near_best_restarts"), the reference losses per level
  ("loss_constant", "loss_dedicated", "loss_closed_form", "loss_closed_form_configs" and the
  kept loss over each, "loss_ratios", in place of format 2's "baselines": {"constant",
  "no_superposition"}, read into loss_constant and loss_dedicated) and the statistics over
  restarts ("restart_stats"); later also the job's thread counts ("threads", null in files
  written before).
- 2: the keys of format 1, plus "format": 2, "task_module" (the file of a task of your own, null
  for a built-in one) and "engine".
- 1 (no "format" key): files written before the format was recorded; keys that came later get
  their defaults (e.g. no "files": a run written before results.json recorded digests).
A format newer than FORMAT is refused (ResultsError), since its keys may mean something else.

The phase sweep's layout, relative_importance × feature_probability with r outer, is grid.py's
(phase_level / phase_cell); RunResults.phase_axes and RunResults.level_at read it from there.
"""

from __future__ import annotations

import copy
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from torch import Tensor

from superposition import tasks
from superposition.grid import phase_level
from superposition.store.files import HISTORY, RESULTS, WEIGHTS, read_tensors, write_json

FORMAT = 3
# keys of results.json written only when set (a run without a preset has no verdict)
OMITTED_WHEN_NONE = ("verdict", "files")

Scalar = float | int | bool | None


class ResultsError(ValueError):
    """A payload that is not a run's results in a format this version reads. The message is a
    predicate, one line, that follows the file's name: '<path> does not hold a run's results'."""


@dataclass(frozen=True)
class DataPairs:
    """How many correlated and anticorrelated feature pairs the data had (config data.*)."""

    correlated_pairs: int = 0
    anticorrelated_pairs: int = 0


@dataclass(frozen=True)
class Exclusion:
    """A restart frozen (non-finite) and excluded from selection."""

    level: int
    restart: int


@dataclass(kw_only=True)
class LevelResult:
    """One grid point: its data settings, the kept restart and what was measured on it."""

    feature_probability: float
    importance: Annotated[list[float], "feature"]
    # the extra feature's relative importance in a phase sweep, else None
    relative_importance: float | None = None
    best_restart: int | None  # None when no restart stayed finite
    eval_loss: float | None
    # standard error of eval_loss: the kept restart re-evaluated on fresh rows (analysis/evaluate)
    eval_loss_se: float | None = None
    restart_eval_losses: Annotated[list[float | None], "restart"] = field(default_factory=list)
    restart_eval_loss_se: Annotated[list[float | None], "restart"] = field(default_factory=list)
    # restarts whose loss is within NEAR_BEST_SE standard errors of the kept one's (itself too)
    near_best_restarts: list[int] = field(default_factory=list)
    excluded_restarts: list[int] = field(default_factory=list)
    # statistics over every restart, not only the kept one (analysis/restarts.py): "finite",
    # "loss_quantiles", "within_1pct", "geometry" (name → restarts, of, kept); None before format 3
    restart_stats: dict[str, Any] | None = None
    # scalars by name, an open set (analysis.metrics.level_metrics)
    metrics: dict[str, Scalar] = field(default_factory=dict)
    # per feature: its held-out loss over its loss when dropped (evaluate.py)
    feature_loss_ratio: Annotated[list[float | None], "feature"] | None = None
    one_sign_features: list[int] | None = None
    # closed-form reference losses (README, "Baselines"), None where they do not apply: the best
    # model that represents nothing; no superposition (tasks' baselines); the 2 -> 1 phase
    # diagram's configurations by name (drop, dedicate, antipodal; tasks' closed_forms) and
    # their minimum
    loss_constant: float | None = None
    loss_dedicated: float | None = None
    loss_closed_form: float | None = None
    loss_closed_form_configs: dict[str, float] | None = None

    def references(self) -> dict[str, float]:
        """The reference losses that apply, by name (constant, dedicated, closed_form)."""
        values = {
            "constant": self.loss_constant,
            "dedicated": self.loss_dedicated,
            "closed_form": self.loss_closed_form,
        }
        return {name: value for name, value in values.items() if value is not None}

    @property
    def loss_ratios(self) -> dict[str, float]:
        """The kept restart's eval_loss over each reference, by name; a reference of 0 has none
        (results.json's "loss_ratios": derived, so recomputed on reading)."""
        if self.eval_loss is None:
            return {}
        return {name: self.eval_loss / ref for name, ref in self.references().items() if ref}

    def to_json(self) -> dict[str, Any]:
        payload = {}
        for key, value in _plain_fields(self).items():
            payload[key] = value
            if key == "loss_closed_form_configs":
                payload["loss_ratios"] = self.loss_ratios
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LevelResult:
        values = _known(cls, payload)
        # format 1 and 2 (and early 3): the task's baselines as one dict
        old = payload.get("baselines")
        if isinstance(old, dict) and "loss_constant" not in payload:
            values["loss_constant"] = old.get("constant")
            values["loss_dedicated"] = old.get("no_superposition")
        return cls(**values)


@dataclass(kw_only=True)
class RunResults:
    """What results.json holds, in its key order."""

    format: int = FORMAT
    config_fingerprint: str | None = None
    task: str
    task_module: str | None = None
    engine: str | None = None
    n_features: int
    d_hidden: int
    hidden_relu: bool = False
    # the initial scale used (model.init with auto resolved)
    init: str | None = None
    importance: Annotated[list[float], "feature"] = field(default_factory=list)
    preset: str | None = None
    feature_probability: list[float] = field(default_factory=list)
    relative_importance: list[float] = field(default_factory=list)
    data: DataPairs = field(default_factory=DataPairs)
    restarts: int
    steps: int
    seed: int | None = None
    device: str | None = None
    eval_batch_size: int | None = None
    # how eval_loss was estimated: "stratified" (rows with 0 and 1 active features exactly, the
    # rest sampled) or "monte_carlo" (plain sampling: correlated or anticorrelated pairs)
    eval_method: str | None = None
    chunk_size: int | None = None
    levels: list[LevelResult]
    excluded: list[Exclusion] = field(default_factory=list)
    # levels whose every restart diverged (best_restart null, NaN weights)
    levels_without_finite_restart: list[int] = field(default_factory=list)
    train_seconds: float | None = None
    instance_steps_per_s: float | None = None
    # the thread counts the job used and why (engine/threads.py ThreadPlan)
    threads: dict[str, Any] | None = None
    # training batches a sparse sampler cut at its capacity; expected 0
    sampler_overflows: int = 0
    verdict: str | None = None  # "PASS" or "FAIL" when a preset judged the run
    # sha256 of the files written with results.json, by name (store.outdir.digests)
    files: dict[str, str] | None = None

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def phase_axes(self) -> tuple[list[float], list[float]]:
        """(r values, p values) of a phase sweep; ValueError when the results hold no such grid."""
        r_values = [float(r) for r in self.relative_importance]
        p_values = [float(p) for p in self.feature_probability]
        if not r_values or not p_values:
            raise ValueError("results hold no relative_importance × feature_probability grid")
        if len(r_values) * len(p_values) != self.n_levels:
            raise ValueError(
                f"{len(r_values)} r × {len(p_values)} p values do not match {self.n_levels} levels"
            )
        return r_values, p_values

    def level_at(self, r_index: int, p_index: int) -> int:
        """The level of the phase sweep's cell (relative_importance[r_index],
        feature_probability[p_index]) (grid.phase_level)."""
        return phase_level(r_index, p_index, len(self.feature_probability))

    def to_json(self) -> dict[str, Any]:
        """results.json's payload: plain values, the keys in their order (NaN not yet nulled:
        files.write_json does it)."""
        payload = _plain_fields(self)
        payload["data"] = _plain_fields(self.data)
        payload["levels"] = [level.to_json() for level in self.levels]
        payload["excluded"] = [_plain_fields(e) for e in self.excluded]
        for key in OMITTED_WHEN_NONE:
            if payload[key] is None:
                del payload[key]
        return payload

    @classmethod
    def from_json(cls, payload: Any) -> RunResults:
        """The results in `payload` (results.json parsed), format 1 to FORMAT; ResultsError
        otherwise."""
        if not isinstance(payload, dict) or not isinstance(payload.get("levels"), list):
            raise ResultsError("does not hold a run's results")
        version = payload.get("format", 1)
        if version not in range(1, FORMAT + 1):
            raise ResultsError(
                f"is in results format {version!r}, which this version cannot read (formats 1 "
                f"to {FORMAT}); read it with the version that wrote it"
            )
        try:
            return cls._parse(copy.deepcopy(payload))  # shares no list or dict with payload
        except (KeyError, TypeError, AttributeError) as err:
            raise ResultsError(f"does not hold a run's results ({_reason(err)})") from None

    @classmethod
    def _parse(cls, payload: dict[str, Any]) -> RunResults:
        values = _known(cls, payload)
        values["format"] = FORMAT  # read into today's structure, written back as such
        values["levels"] = [LevelResult.from_json(level) for level in payload["levels"]]
        if values.get("data") is not None:
            values["data"] = DataPairs(**_known(DataPairs, values["data"]))
        else:
            values.pop("data", None)
        values["excluded"] = [Exclusion(**e) for e in values.get("excluded") or []]
        return cls(**values)


def _plain_fields(obj) -> dict[str, Any]:
    """The dataclass's fields by name, in order, shallow (nested dataclasses left as they are)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _known(cls, payload: dict[str, Any]) -> dict[str, Any]:
    """The entries of `payload` that are fields of `cls` (keys it does not know are ignored);
    KeyError for a field without a default that `payload` lacks."""
    if not isinstance(payload, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(payload).__name__}")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in payload:
            raise KeyError(f.name)
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in payload.items() if k in names}


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"no {err.args[0]!r}"
    return " ".join(str(err).split())


# -------------------------------------------------------------------------------------- files


def read_results(out_dir: Path | str) -> RunResults:
    """OUT_DIR/results.json; ResultsError (a ValueError) when it holds no results this version
    reads, json.JSONDecodeError when it is not JSON."""
    path = Path(out_dir) / RESULTS
    try:
        return RunResults.from_json(json.loads(path.read_text()))
    except ResultsError as err:
        raise ResultsError(f"{path} {err}") from None


def write_results(out_dir: Path | str, results: RunResults) -> Path:
    """Write OUT_DIR/results.json atomically (NaN and ±inf as null); return its path."""
    path = Path(out_dir) / RESULTS
    write_json(path, results.to_json())
    return path


@dataclass
class Run:
    """What a job leaves: its results, the selected weights (level axis first) and, when
    present, the loss record (steps, loss (time, level, restart))."""

    results: RunResults
    weights: dict[str, Tensor]
    history: dict[str, Tensor] | None = None

    @property
    def task(self) -> str:
        return self.results.task

    @property
    def levels(self) -> list[LevelResult]:
        return self.results.levels

    @property
    def n_levels(self) -> int:
        return self.results.n_levels

    @property
    def features(self) -> Annotated[Tensor, "level hidden feature"]:
        """The task's feature_weights (W for identity, W1 for abs), float64; a level no restart
        kept finite is all NaN."""
        return self.weights[tasks.get(self.task).feature_weights].double()


def load_run(out_dir: Path | str) -> Run:
    """results.json, weights.safetensors and (when present) history.safetensors of a finished
    run's output directory."""
    out_dir = Path(out_dir)
    history_path = out_dir / HISTORY
    results = read_results(out_dir)
    if results.task_module is not None:  # a researcher's task: registered by its module
        tasks.import_task_module(results.task_module)
    return Run(
        results=results,
        weights=read_tensors(out_dir / WEIGHTS),
        history=read_tensors(history_path) if history_path.exists() else None,
    )
