"""The runner's Hydra launchers: hydra's in-process one and hydra-submitit-launcher's local and
SLURM ones, each of which records the sweep's jobs in SWEEP_DIR/manifest.json
(superposition/sweep/manifest.py; in-process and local before the jobs run, on SLURM once the
scheduler took them), so that `python -m superposition.sweep status|collect` know every job,
started or not.
A job whose config already finished in the sweep, or whose directory's job is still queued or
running, is not launched again.

The SLURM launcher returns once the job array is queued (`hydra.launcher.wait=false`, its
default): the jobs checkpoint, requeue and finish without the submitting command, and nothing is
lost when it ends. `hydra.launcher.wait=true` waits for every job as hydra-submitit-launcher does.
The local launcher always waits, running at most one job per CPU at once, each pinned to its
share; when it is interrupted or fails, it tells the running jobs to stop (they checkpoint).

Hydra looks for launchers only under the `hydra_plugins` package, hence this folder.
"""

import copy
import fcntl
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher, BasicLauncherConf
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import DictConfig, OmegaConf, open_dict

from superposition.config import ConfigError
from superposition.engine.cpus import LOCAL_CPUS_ENV, cpu_allocation, format_cpu_list
from superposition.sweep.manifest import (
    Job,
    Manifest,
    ManifestError,
    Submission,
    read_manifest,
    write_manifest,
)
from superposition.sweep.status import sweep_status

MODULE = "hydra_plugins.superposition_launchers.launchers"
# seconds between looks at the running local jobs
LOCAL_POLL_S = 0.5


def sweep_group(config: DictConfig) -> str:
    """The W&B group of the sweep's runs: wandb.group, else the sweep directory's last two parts
    (its date and time by default)."""
    return config.wandb.group or "_".join(Path(str(config.hydra.sweep.dir)).parts[-2:])


@dataclass
class Plan:
    """A submission's jobs: those to launch, and those left alone with the reason."""

    launch: list[Job] = field(default_factory=list)
    finished: list[Job] = field(default_factory=list)  # its config finished in the sweep
    active: list[Job] = field(default_factory=list)  # still queued or running there

    def say(self, sweep_dir: Path) -> None:
        total = len(self.launch) + len(self.finished) + len(self.active)
        if self.finished:
            print(
                f"{len(self.finished)} of {total} jobs already finished in {sweep_dir}: not "
                "launched again",
                flush=True,
            )
        if self.active:
            print(
                f"{len(self.active)} of {total} jobs still queued or running in {sweep_dir}: not "
                "launched again",
                flush=True,
            )


def plan_jobs(
    launcher: BasicLauncher | BaseSubmititLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    manifest: Manifest,
) -> Plan:
    """Each job with its directory as Hydra names it (hydra.sweep.subdir, resolved per job) and
    its config's fingerprint, sorted into a Plan: a job whose config finished in any of the
    sweep's directories, or whose directory's job is still queued or running, is not launched."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    states = {state.job.dir: state for state in sweep_status(sweep_dir, manifest)}
    finished_configs = {
        state.results.config_fingerprint for state in states.values() if state.results
    }
    plan = Plan()
    for index, overrides in enumerate(job_overrides):
        num = initial_job_idx + index
        job_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(job_config):
            job_config.hydra.job.num = num
        job = Job(
            dir=str(job_config.hydra.sweep.subdir),
            overrides=list(overrides),
            num=num,
            submission=0,
            fingerprint=fingerprint_of(job_config),
        )
        known = states.get(job.dir)
        if job.fingerprint is not None and job.fingerprint in finished_configs:
            plan.finished.append(job)
        elif known is not None and known.state in ("queued", "running"):
            plan.active.append(job)
        elif job.fingerprint is None and known is not None and known.state == "finished":
            plan.finished.append(job)
        else:
            plan.launch.append(job)
    return plan


def fingerprint_of(job_config: DictConfig) -> str | None:
    """The job's config fingerprint (job.config_fingerprint); None for a config the job would
    refuse, which the job then says in one line."""
    from superposition.job import config_fingerprint  # torch and more: only when launching

    try:
        task_config = copy.deepcopy(job_config)
        with open_dict(task_config):
            del task_config["hydra"]
        return config_fingerprint(OmegaConf.to_object(task_config))
    except Exception:
        return None


class ManifestLock:
    """An exclusive flock on SWEEP_DIR/.manifest.lock, held from reading the manifest to writing
    it back: two submissions to one sweep directory plan and record one after the other."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / ".manifest.lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def current_manifest(config: DictConfig) -> Manifest:
    """The sweep directory's manifest (a new one when it has none); ConfigError with one line
    when it cannot be read, before anything is launched."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        manifest = read_manifest(sweep_dir)
    except ManifestError as err:
        raise ConfigError(
            f"{err}; move it away to start the sweep's record afresh (the job directories stay)"
        ) from None
    return manifest or Manifest(sweep_dir=str(sweep_dir.resolve()), wandb={})


@contextmanager
def planning(
    launcher: BasicLauncher | BaseSubmititLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> Iterator[tuple[Manifest, Plan]]:
    """The sweep's manifest and this submission's Plan (said on the terminal), with the
    ManifestLock held until the block has recorded the submission."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    with ManifestLock(sweep_dir):
        manifest = current_manifest(launcher.config)
        plan = plan_jobs(launcher, job_overrides, initial_job_idx, manifest)
        plan.say(sweep_dir)
        yield manifest, plan


def record_submission(
    manifest: Manifest,
    config: DictConfig,
    launcher_name: str,
    plan: Plan,
    wait: bool,
    scheduler_job_id: str | None = None,
) -> None:
    """Add this submission and the jobs it launched to the manifest and write it (the jobs it
    left alone keep their entries; a finished one is listed anew when the manifest lacks its
    directory and no other directory holds its config). Call with the ManifestLock held."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    submission = Submission(
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
        launcher=launcher_name,
        argv=list(sys.argv),
        host=socket.gethostname(),
        pid=os.getpid(),
        wait=wait,
        scheduler_job_id=scheduler_job_id,
    )
    manifest.wandb = {
        "mode": getattr(config.wandb.mode, "value", str(config.wandb.mode)),
        "project": config.wandb.project,
        "entity": config.wandb.entity,
        "group": sweep_group(config),
    }
    listed = {job.fingerprint for job in manifest.jobs}
    unknown = [
        job
        for job in plan.finished
        if manifest.job(job.dir) is None and job.fingerprint not in listed
    ]
    manifest.add(submission, plan.launch + unknown)
    write_manifest(sweep_dir, manifest)


@contextmanager
def stderr_held_back() -> Iterator[None]:
    """What sbatch writes to stderr (file descriptor 2) is held back while jobs are submitted:
    on success it is passed on; on failure the error (which quotes it) is the one line shown."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


class InProcessLauncher(BasicLauncher):
    """Hydra's basic launcher (jobs one after another in this process), with a manifest."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        with planning(self, job_overrides, initial_job_idx) as (manifest, plan):
            record_submission(manifest, self.config, "in-process", plan, wait=True)
        jobs = plan.launch
        # one call per job keeps each job's number from the whole sweep's numbering
        returns: list[JobReturn] = []
        for job in jobs:
            returns += super().launch([job.overrides], job.num)
        return returns


class _SweepSubmitit:
    """What the local and SLURM launchers add to hydra-submitit-launcher's: the manifest, and
    (SLURM) returning once the jobs are queued."""

    _NAME = "abstract"

    def __init__(self, **params) -> None:
        self.wait = bool(params.pop("wait", True))
        super().__init__(**params)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with planning(self, job_overrides, initial_job_idx) as (manifest, plan):
            jobs = plan.launch
            submitted = self._submit(jobs) if jobs else []
            # recorded once the scheduler took the jobs: a refused submission leaves no entry
            for job, scheduler_job in zip(jobs, submitted, strict=True):
                job.scheduler_id = scheduler_job.job_id
            array = submitted[0].job_id.partition("_")[0] if submitted else None
            record_submission(manifest, self.config, self._NAME, plan, self.wait, array)
        if not jobs:
            return []
        if self.wait:
            print_waiting(sweep_dir, self._NAME, submitted)
            return [job.results()[0] for job in submitted]
        print_submitted(sweep_dir, submitted)
        return [left_running(job.overrides) for job in jobs]

    def _submit(self, jobs: list[Job]) -> list:
        """The jobs to the executor as one array (sbatch's stderr held back); its jobs."""
        state = Singleton.get_state()
        arguments = [
            (job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", state)
            for job in jobs
        ]
        with stderr_held_back():
            return self._executor().map_array(self, *zip(*arguments, strict=True))

    def _executor(self):
        import submitit

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        init = {}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(folder=folder, cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(LocalQueueConf).keys()) - {"_target_"}
        executor.update_parameters(
            **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        return executor


def left_running(overrides: Sequence[str]) -> JobReturn:
    """What Hydra gets for a job left to run without this process: nothing to return here."""
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)


def sweep_commands(sweep_dir: Path) -> list[str]:
    return [
        f"  status:  python -m superposition.sweep status {sweep_dir}",
        f"  collect: python -m superposition.sweep collect {sweep_dir}",
    ]


def print_submitted(sweep_dir: Path, submitted: list) -> None:
    array = submitted[0].job_id.partition("_")[0]
    lines = [
        f"submitted {len(submitted)} job{'s' if len(submitted) != 1 else ''} to SLURM as array "
        f"job {array}; they run without this command (hydra.launcher.wait=true waits for them)",
        f"sweep directory: {sweep_dir}",
        *sweep_commands(sweep_dir),
    ]
    print("\n".join(lines), flush=True)


def print_waiting(sweep_dir: Path, name: str, submitted: list, at_once: int | None = None) -> None:
    where = "SLURM" if name == "slurm" else "this machine"
    pace = f", {at_once} at a time" if at_once is not None and at_once < len(submitted) else ""
    print(
        f"started {len(submitted)} job{'s' if len(submitted) != 1 else ''} on {where}{pace}; "
        f"waiting for them (sweep directory: {sweep_dir}; follow it with python -m "
        f"superposition.sweep status {sweep_dir})",
        flush=True,
    )


class LocalSweepLauncher(_SweepSubmitit, LocalLauncher):
    """Every job in its own process on this machine, at most as many at once as the machine has
    CPUs for (hydra.launcher.max_parallel, 0: one per CPU of this process's allocation, see
    engine/cpus.py), each pinned to its share of the CPUs (engine/threads.py reads it), so that
    the jobs of a sweep do not fight for cores. The jobs are recorded in the manifest before the
    first one starts; a job's submitit id is added once it has started."""

    _NAME = "local"

    def __init__(self, **params) -> None:
        self.max_parallel = int(params.pop("max_parallel", 0) or 0)
        if self.max_parallel < 0:
            raise ConfigError(
                f"hydra.launcher.max_parallel must be >= 0 (0 = one job per CPU), got "
                f"{self.max_parallel}"
            )
        super().__init__(**params)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with planning(self, job_overrides, initial_job_idx) as (manifest, plan):
            record_submission(manifest, self.config, self._NAME, plan, wait=True)
        jobs = plan.launch
        if not jobs:
            return []
        allocation = cpu_allocation(pin=False)
        cpus = sorted(allocation.ids) if allocation.ids else list(range(allocation.cpus))
        shares = cpu_shares(cpus, allocation.cpus, len(jobs), self.max_parallel)
        print_waiting(sweep_dir, self._NAME, jobs, len(shares))
        executor = self._executor()
        state = Singleton.get_state()
        waiting, running, started = list(range(len(jobs))), {}, {}
        try:
            while waiting or running:
                for share in [share for share in shares if share not in running.values()]:
                    if not waiting:
                        break
                    index = waiting.pop(0)
                    started[index] = self._start(executor, jobs[index], share, state)
                    running[index] = share
                    record_scheduler_id(sweep_dir, jobs[index].dir, started[index].job_id)
                time.sleep(LOCAL_POLL_S)
                for index in [i for i in running if started[i].done()]:
                    del running[index]
        except BaseException:
            # nothing outlives the command: the running jobs are told to stop (SIGINT: they
            # checkpoint), as they would be on Ctrl-C in a terminal
            for index in running:
                started[index].cancel(check=False)
            raise
        return [started[index].results()[0] for index in range(len(jobs))]

    def _start(self, executor, job: Job, share: str, state) -> object:
        """Submit one job, its process tree pinned to `share` (taskset, where there is one) and
        told its CPUs (LOCAL_CPUS_ENV, read by engine/cpus.py)."""
        setup = [f"export {LOCAL_CPUS_ENV}={share}"]
        if shutil.which("taskset"):
            setup.append(f"{{ taskset -pc {share} $$ >/dev/null 2>&1 || true; }}")
        executor.update_parameters(local_setup=setup)
        arguments = (job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}")
        return executor.submit(self, *arguments, state)


def cpu_shares(cpus: list[int], allowed: int, n_jobs: int, max_parallel: int) -> list[str]:
    """The CPU lists of the jobs that run at once: one job per allowed CPU (`allowed`: the
    CPUs the launcher may use, at most len(cpus), e.g. under a cgroup quota), at most
    max_parallel when > 0 and at most n_jobs; each job an equal share of them, the rest unused."""
    parallel = max(1, min(n_jobs, allowed, max_parallel or allowed))
    per_job = max(1, min(allowed, len(cpus)) // parallel)
    return [format_cpu_list(cpus[i * per_job : (i + 1) * per_job]) for i in range(parallel)]


def record_scheduler_id(sweep_dir: Path, job_dir: str, scheduler_id: str) -> None:
    """Add a started local job's submitit id (its log folder) to the manifest."""
    with ManifestLock(sweep_dir):
        manifest = read_manifest(sweep_dir)
        job = manifest.job(job_dir) if manifest else None
        if job is not None:
            job.scheduler_id = scheduler_id
            write_manifest(sweep_dir, manifest)


class SlurmSweepLauncher(_SweepSubmitit, SlurmLauncher):
    _NAME = "slurm"


@dataclass
class InProcessConf(BasicLauncherConf):
    _target_: str = f"{MODULE}.InProcessLauncher"


@dataclass
class LocalSweepConf(LocalQueueConf):
    _target_: str = f"{MODULE}.LocalSweepLauncher"
    # jobs running at once; 0 = one per CPU (each job gets an equal share of the CPUs)
    max_parallel: int = 0


@dataclass
class SlurmSweepConf(SlurmQueueConf):
    _target_: str = f"{MODULE}.SlurmSweepLauncher"
    # return once the jobs are queued (false) or wait for every job to end (true)
    wait: bool = False


_store = ConfigStore.instance()
_store.store(group="hydra/launcher", name="superposition_in_process", node=InProcessConf)
_store.store(group="hydra/launcher", name="superposition_local", node=LocalSweepConf)
_store.store(group="hydra/launcher", name="superposition_slurm", node=SlurmSweepConf)
