#!/usr/bin/env python
"""The prepared GPU check (issue 15): the GPU tests, the benchmark and one paper-size run on a
CUDA machine, every figure in one JSON file.

Here, where pip reaches the package registry, once:

    python scripts/gpu_check.py --fetch-wheels .whl

fills .whl (git-ignored) with the wheels that the GPU machine's image lacks: hydra-core, omegaconf,
antlr4-python3-runtime, wandb, submitit, hydra-submitit-launcher and those of their dependencies
that are not in the image, at the versions installed here, for CPython 3.12 on x86-64 Linux. Then
on the GPU machine (torch with CUDA there, nothing to download), in the repository's root:

    python3 scripts/gpu_check.py --wheels .whl --out gpu_check.json

Steps, in order, each with a time limit (all four well under 8 minutes on an H200):
1. install: the wheels into a folder of the check's own (pip install --target, offline) unless
   the packages import already; the project through PYTHONPATH=the repository's root (nothing
   is built, nothing written into the image's Python); an import of every module the steps need;
   Python's, torch's and CUDA's versions and the GPU's name.
2. gpu_tests: `pytest -m gpu`, the numeric tests on device=cuda.
3. bench: scripts/bench.py --device cuda --quick, its JSON copied in.
4. paper_run: preset=neuron_computation_paper on cuda (abs 100 -> 40, 7 levels x 64 restarts,
   5000 steps): wall time, results.json's headline figures and the report's verdict.
The JSON is written after every step, so a check cut short keeps what it did; a step that runs
out of time is recorded as a timeout and the next one starts. Each step's whole output is kept in
the folder <out>.logs beside the JSON.

--dry-run: the same steps on the CPU at tiny sizes, well under a minute on 2 cores
(tests/test_gpu_check.py). Exit status: 0 when every step is ok, 1 when one is not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the project's dependencies that the GPU machine's image lacks, by distribution and import name
MISSING_THERE = (
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "wandb",
    "submitit",
    "hydra-submitit-launcher",
)
MODULES = (
    "hydra",
    "omegaconf",
    "antlr4",
    "wandb",
    "submitit",
    "hydra_plugins.hydra_submitit_launcher",
)
# imports each module named on its command line, prints {module: "ok" or the error} as JSON
IMPORT_PROBE = """
import importlib, json, sys
result = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        result[name] = "ok"
    except Exception as error:
        result[name] = f"{type(error).__name__}: {error}"
print(json.dumps(result))
"""
# packages whose versions the JSON records
RECORDED_PACKAGES = (*MISSING_THERE, "torch", "numpy", "einops", "matplotlib", "safetensors")
RECORDED_PACKAGES += ("tqdm", "pytest", "pyyaml")

# The GPU machine's image (the device tool's KINDS.md, read 2026-11): its packages are not fetched
IMAGE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore
    httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
    mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numpy numpyro onnx onnxruntime opencv-python-headless optax opt-einsum orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
    protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scipy
    seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
    uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)
IMAGE_PATTERNS = ("cuda-*", "nvidia-*", "pytest-*", "scikit-*", "jax-*", "onnx*")
# the GPU machine's interpreter, for pip download and for the requirements' markers
TARGET_PYTHON = "3.12"
TARGET_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
TARGET_MARKERS = {
    "python_version": TARGET_PYTHON,
    "python_full_version": f"{TARGET_PYTHON}.3",
    "implementation_name": "cpython",
    "implementation_version": f"{TARGET_PYTHON}.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}

# Time limits in seconds: each step's own, and the whole check's (under 8 minutes), of which each
# step leaves RESERVE_S to every step after it
STEP_LIMIT_S = {"install": 60, "gpu_tests": 90, "bench": 180, "paper_run": 300}
TOTAL_LIMIT_S = 465
RESERVE_S = 45
TAIL_CHARS = 3000

GPU_SIZES = {
    "bench": ["--device", "cuda", "--quick"],
    "paper_run": ["preset=neuron_computation_paper", "device=cuda"],
}
DRY_RUN_SIZES = {
    "bench": ["--device", "cpu", "--quick", "--tiny", "--steps", "10", "--repeats", "1"]
    + ["--only", "W1"],
    "paper_run": ["preset=neuron_computation_paper", "device=cpu", "train.restarts=1"]
    + ["train.steps=20", "eval.batch_size=2048"],
}
# results.json's keys (superposition/store/results.py) that the JSON copies: the run's and each
# level's
RUN_KEYS = (
    "preset",
    "task",
    "n_features",
    "d_hidden",
    "restarts",
    "steps",
    "device",
    "engine",
    "chunk_size",
    "eval_method",
    "eval_batch_size",
    "train_seconds",
    "instance_steps_per_s",
    "sampler_overflows",
    "levels_without_finite_restart",
    "verdict",
)
LEVEL_KEYS = ("feature_probability", "best_restart", "eval_loss", "eval_loss_se")


class BadInput(Exception):
    """What the user asked for cannot be done; the message is one line."""


# ---------------------------------------------------------------------------------------------
# Running a step
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a command ended: its exit status (None: killed at its time limit) and its output."""

    returncode: int | None
    seconds: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def status(self) -> str:
        return "timeout" if self.timed_out else "ok" if self.returncode == 0 else "failed"


@dataclass
class Check:
    dry_run: bool
    out: Path
    work: Path  # a temporary folder: the installed wheels, the bench's JSON, the run's output
    started: float = field(default_factory=time.perf_counter)
    wheels: list[Path] = field(default_factory=list)  # none when the packages import already
    site: Path | None = None  # where the wheels went
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.out.with_name(self.out.name + ".logs")

    @property
    def sizes(self) -> dict[str, list[str]]:
        return DRY_RUN_SIZES if self.dry_run else GPU_SIZES

    def environ(self) -> dict[str, str]:
        """The steps' environment: the installed wheels and the repository on the path."""
        paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        if self.site is not None:
            paths.insert(0, str(self.site))
        quiet = {"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
        return {**os.environ, **quiet, "PYTHONPATH": os.pathsep.join(paths)}

    def time_left(self, step: str, steps_after: int) -> float:
        left = TOTAL_LIMIT_S - (time.perf_counter() - self.started) - RESERVE_S * steps_after
        return max(10.0, min(STEP_LIMIT_S[step], left))

    def run(self, name: str, command: list[str], limit: float) -> Outcome:
        """Run `command` in the repository's root, its output into <out>.logs/<name>.log; at the
        limit its whole process group is killed (the bench's fresh processes too)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        started = time.perf_counter()
        with log.open("w") as output:
            output.write(f"$ {' '.join(command)}\n")
            output.flush()
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode: int | None = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = None
        return Outcome(returncode, time.perf_counter() - started, log)

    def save(self) -> None:
        self.report["total_seconds"] = round(time.perf_counter() - self.started, 2)
        write_json(self.out, self.report)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    partial.replace(path)


def outcome_record(outcome: Outcome, command: list[str]) -> dict[str, Any]:
    return {
        "status": outcome.status(),
        "command": " ".join(command),
        "returncode": outcome.returncode,
        "wall_s": round(outcome.seconds, 2),
        "log": str(outcome.log),
    }


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def missing_modules() -> list[str]:
    """The import names of MODULES that this interpreter cannot find."""
    missing = []
    for name in MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def require_wheels(folder: Path, missing: list[str]) -> list[Path]:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        what = "no such folder" if not folder.exists() else "no wheels in it"
        raise BadInput(
            f"--wheels {folder}: {what}; {', '.join(missing)} must be installed from there "
            f"(fill it where pip reaches the registry: "
            f"python scripts/gpu_check.py --fetch-wheels {folder})"
        )
    return wheels


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "packages": package_versions(),
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def install(check: Check, limit: float) -> dict[str, Any]:
    """The wheels into a folder of the check's own (when packages are missing), then an import of
    everything the steps import, through the steps' environment."""
    record: dict[str, Any] = {"status": "ok"}
    wheels = check.wheels
    if wheels:
        site = check.work / "site"
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        command += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
        outcome = check.run("install", command + [str(w) for w in wheels], limit)
        record.update(outcome_record(outcome, command + ["<wheels>"]))
        record["installed"] = [wheel.name for wheel in wheels]
        if outcome.status() != "ok":
            record["tail"] = outcome.tail()
            return record
        check.site = site
        sys.path.insert(0, str(site))  # for package_versions
        importlib.invalidate_caches()
    else:
        record["installed"] = "nothing: the packages import already"
    record["imports"] = imports(check, limit)
    if any(result != "ok" for result in record["imports"].values()):
        record["status"] = "failed"
    record["pythonpath"] = check.environ()["PYTHONPATH"]
    check.report["environment"]["packages"] = package_versions()
    return record


def imports(check: Check, limit: float) -> dict[str, str]:
    """Each module the steps import, imported in the steps' environment: "ok" or its error."""
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *MODULES, "superposition.run"],
        cwd=REPO,
        env=check.environ(),
        capture_output=True,
        text=True,
        timeout=limit,
    )
    if probe.returncode != 0:
        return {"probe": last_line(probe.stderr)}
    return json.loads(probe.stdout.strip().splitlines()[-1])


SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")
CLOSING_TIME = re.compile(r" in [\d.]+s\b")


def pytest_counts(output: str) -> dict[str, Any]:
    """The counts of pytest's closing line ('3 passed, 2 skipped, 500 deselected in 9.1s'), and
    the tests that failed (-ra lists them)."""
    closing = next(
        (
            line
            for line in reversed(output.splitlines())
            if SUMMARY_COUNT.search(line) and CLOSING_TIME.search(line)
        ),
        "",
    )
    counts: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "errors": 0}
    for number, what in SUMMARY_COUNT.findall(closing):
        counts["errors" if what.startswith("error") else what] = int(number)
    counts["summary"] = closing.strip(" =")
    counts["not_passed"] = [
        line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))
    ]
    return counts


def gpu_tests(check: Check, limit: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    outcome = check.run("gpu_tests", command, limit)
    record = outcome_record(outcome, command)
    record.update(pytest_counts(outcome.log.read_text(errors="replace")))
    record["tail"] = outcome.tail()
    if record["status"] == "ok" and not check.dry_run and record["skipped"]:
        record["status"] = "failed"
        record["why"] = "gpu tests skipped on the GPU machine: torch sees no CUDA GPU in pytest"
    if check.dry_run:
        record["expected"] = "every gpu test skipped: no CUDA GPU in a dry run"
    return record


def bench(check: Check, limit: float) -> dict[str, Any]:
    figures_path = check.work / "bench.json"
    command = [sys.executable, "scripts/bench.py", *check.sizes["bench"]]
    command += ["--json", str(figures_path)]
    outcome = check.run("bench", command, limit)
    record = outcome_record(outcome, command)
    if outcome.status() != "ok" or not figures_path.exists():
        record["status"] = "timeout" if outcome.timed_out else "failed"
        record["tail"] = outcome.tail()
        return record
    figures = json.loads(figures_path.read_text())
    workloads = figures.get("workloads", {})
    record["speedups"] = {name: w.get("speedup") for name, w in workloads.items()}
    record["target_met"] = {name: w.get("target_met") for name, w in workloads.items()}
    record["verdicts"] = figures.get("verdicts", [])
    record["figures"] = figures
    return record


def paper_run(check: Check, limit: float) -> dict[str, Any]:
    run_dir = check.work / "paper_run"
    command = [sys.executable, "-m", "superposition.run", *check.sizes["paper_run"]]
    command += ["wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    outcome = check.run("paper_run", command, limit)
    record = outcome_record(outcome, command)
    results_path = run_dir / "results.json"
    if outcome.status() != "ok" or not results_path.exists():
        record["status"] = "timeout" if outcome.timed_out else "failed"
        record["tail"] = outcome.tail()
        return record
    record["results"] = headline(json.loads(results_path.read_text()))
    report_path = run_dir / "report.md"
    record["report"] = report_path.read_text() if report_path.exists() else None
    record["report_verdict"] = report_verdict(record["report"] or "")
    return record


def headline(results: dict[str, Any]) -> dict[str, Any]:
    figures = {key: results.get(key) for key in RUN_KEYS}
    figures["levels"] = [{key: level.get(key) for key in LEVEL_KEYS} for level in results["levels"]]
    figures["excluded_restarts"] = len(results.get("excluded", []))
    return figures


def report_verdict(report: str) -> str | None:
    found = re.findall(r"^verdict: (\w+)", report, flags=re.MULTILINE)
    return found[-1] if found else None


STEPS: tuple[tuple[str, Callable[[Check, float], dict[str, Any]]], ...] = (
    ("install", install),
    ("gpu_tests", gpu_tests),
    ("bench", bench),
    ("paper_run", paper_run),
)


def run_steps(check: Check) -> bool:
    """Every step in order, the JSON saved after each; True when every one was ok."""
    check.report["steps"] = {}
    for index, (name, step) in enumerate(STEPS):
        limit = check.time_left(name, steps_after=len(STEPS) - index - 1)
        started = time.perf_counter()
        try:
            record = step(check, limit)
        except Exception as error:  # a step that breaks is recorded; the next one still runs
            record = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        record["seconds"] = round(time.perf_counter() - started, 2)
        record["limit_s"] = round(limit, 1)
        check.report["steps"][name] = record
        check.save()
        print(f"{name:<10} {record['seconds']:7.1f} s  {record['status']}", flush=True)
    return all(step["status"] == "ok" for step in check.report["steps"].values())


def check_gpu(args: argparse.Namespace, wheels: list[Path]) -> int:
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        check = Check(dry_run=args.dry_run, out=out, work=Path(work), wheels=wheels)
        check.report = {
            "check": "dry_run" if args.dry_run else "gpu",
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "repo": str(REPO),
            "git_commit": git_commit(),
            "environment": environment(),
        }
        if not args.dry_run and not check.report["environment"]["cuda_available"]:
            check.save()
            torch_version = check.report["environment"]["torch"]
            raise BadInput(
                f"torch {torch_version} sees no CUDA GPU here; --dry-run checks the script on "
                "the CPU"
            )
        all_ok = run_steps(check)
        check.report["ok"] = all_ok
        check.save()
    print(f"figures in {out}")
    return 0 if all_ok else 1


def git_commit() -> str | None:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# --fetch-wheels: here, for the GPU machine
# ---------------------------------------------------------------------------------------------


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def in_image(name: str) -> bool:
    name = normalized(name)
    return name in IMAGE_PACKAGES or any(fnmatch.fnmatch(name, p) for p in IMAGE_PATTERNS)


def wheel_name_and_version(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return normalized(name), version


def pinned(name: str) -> str:
    """NAME==the version installed here (which the project's tests pass with), else NAME."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600
    )


def fetch_wheel(folder: Path, requirement: str) -> Path:
    """The wheel of `requirement` for the GPU machine into `folder`: downloaded, or built here
    when the registry has only its source and it is pure Python (antlr4-python3-runtime 4.9.3),
    any other version of it in `folder` removed (two stop pip install --target)."""
    name, _, version = requirement.partition("==")
    for old in folder.glob("*.whl"):
        old_name, old_version = wheel_name_and_version(old)
        if old_name == normalized(name) and version and old_version != version:
            old.unlink()
    platforms = [arg for p in TARGET_PLATFORMS for arg in ("--platform", p)]
    target = ["--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms]
    downloaded = pip(
        "download", "--no-deps", "--only-binary=:all:", *target, "-d", str(folder), requirement
    )
    if downloaded.returncode == 0:
        wheel = find_wheel(folder, name, version)
    else:
        built = pip("wheel", "--no-deps", "-w", str(folder), requirement)
        wheel = find_wheel(folder, name, version) if built.returncode == 0 else None
        if wheel is not None and not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()  # built for this machine's Python, not the GPU machine's
            wheel = None
    if wheel is None:
        raise BadInput(
            f"no wheel of {requirement} for CPython {TARGET_PYTHON} on x86-64 Linux: "
            f"{last_line(downloaded.stderr)}"
        )
    return wheel


def find_wheel(folder: Path, name: str, version: str) -> Path | None:
    for wheel in sorted(folder.glob("*.whl")):
        wheel_name, wheel_version = wheel_name_and_version(wheel)
        if wheel_name == normalized(name) and (not version or wheel_version == version):
            return wheel
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def requirements_of(wheel: Path) -> list[str]:
    """The distributions `wheel` needs on the GPU machine (Requires-Dist, markers evaluated for
    it, extras left out)."""
    from packaging.requirements import Requirement  # here only: a dependency of hydra-core

    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    needed = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.partition(":")[2].strip())
        if requirement.marker is None or requirement.marker.evaluate(TARGET_MARKERS):
            needed.append(requirement.name)
    return needed


def fetch_wheels(folder: Path) -> int:
    """Fill `folder` with the wheels of MISSING_THERE and of their dependencies outside the GPU
    machine's image, the whole tree followed through the wheels' metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted, seen, fetched = list(MISSING_THERE), set(), []
    while wanted:
        name = wanted.pop(0)
        if normalized(name) in seen or in_image(name):
            continue
        seen.add(normalized(name))
        wheel = fetch_wheel(folder, pinned(name))
        fetched.append(wheel)
        wanted += requirements_of(wheel)
    total = sum(wheel.stat().st_size for wheel in fetched)
    for wheel in sorted(fetched):
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.2f} MiB  in {len(fetched)} wheels, in {folder}")
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file")
    parser.add_argument(
        "--wheels", type=Path, default=Path(".whl"), help="the wheels to install (offline)"
    )
    parser.add_argument("--dry-run", action="store_true", help="the CPU at tiny sizes")
    parser.add_argument(
        "--fetch-wheels", type=Path, metavar="DIR", help="download the wheels into DIR and stop"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.fetch_wheels is not None:
            return fetch_wheels(args.fetch_wheels)
        missing = missing_modules()
        wheels = require_wheels(args.wheels, missing) if missing else []
        return check_gpu(args, wheels)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
