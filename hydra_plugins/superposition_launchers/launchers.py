"""The runner's Hydra launchers: hydra's in-process one and hydra-submitit-launcher's local and
SLURM ones, each of which first records the sweep's jobs in SWEEP_DIR/manifest.json
(superposition/sweep/manifest.py), so that `python -m superposition.sweep status|collect` know
every job, started or not.

The SLURM launcher returns once the job array is queued (`hydra.launcher.wait=false`, its
default): the jobs checkpoint, requeue and finish without the submitting command, and nothing is
lost when it ends. `hydra.launcher.wait=true` waits for every job as hydra-submitit-launcher does.
The local launcher always waits: submitit ends local jobs when the submitting process ends.

Hydra looks for launchers only under the `hydra_plugins` package, hence this folder.
"""

import copy
import fcntl
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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

from superposition.store.outdir import finished_results
from superposition.sweep.manifest import (
    Job,
    Manifest,
    Submission,
    read_manifest,
    write_manifest,
)

MODULE = "hydra_plugins.superposition_launchers.launchers"


def sweep_group(config: DictConfig) -> str:
    """The W&B group of the sweep's runs: wandb.group, else the sweep directory's last two parts
    (its date and time by default)."""
    return config.wandb.group or "_".join(Path(str(config.hydra.sweep.dir)).parts[-2:])


def plan_jobs(
    launcher: BasicLauncher | BaseSubmititLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> tuple[list[Job], list[Job]]:
    """The jobs to launch and those whose config already finished in the sweep directory, each
    with its directory as Hydra names it (hydra.sweep.subdir, resolved per job)."""
    to_launch, finished = [], []
    for index, overrides in enumerate(job_overrides):
        num = initial_job_idx + index
        job_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(job_config):
            job_config.hydra.job.num = num
        job = Job(
            dir=str(job_config.hydra.sweep.subdir), overrides=list(overrides), num=num, submission=0
        )
        job_dir = Path(str(job_config.hydra.sweep.dir)) / job.dir
        (finished if finished_here(job_config, job_dir) else to_launch).append(job)
    return to_launch, finished


def finished_here(job_config: DictConfig, job_dir: Path) -> bool:
    """job_dir holds a finished run of this job's config. Anything else (no results, broken
    ones, another config's, a config the job would refuse) is left to the job to say."""
    from superposition.job import config_fingerprint  # torch and more: only when launching

    try:
        results = finished_results(job_dir) if job_dir.is_dir() else None
        if results is None:
            return False
        task_config = copy.deepcopy(job_config)
        with open_dict(task_config):
            del task_config["hydra"]
        return results.config_fingerprint == config_fingerprint(OmegaConf.to_object(task_config))
    except Exception:
        return False


class ManifestLock:
    """An exclusive flock on SWEEP_DIR/.manifest.lock: two submissions to one sweep directory
    update its manifest one after the other."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / ".manifest.lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def record_submission(
    config: DictConfig,
    launcher_name: str,
    jobs: list[Job],
    finished: list[Job],
    wait: bool,
    scheduler_job_id: str | None = None,
) -> None:
    """Add this submission and the jobs it launched to the sweep's manifest (the finished jobs
    it skips keep their entries; listed anew when the manifest lacks them)."""
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
    with ManifestLock(sweep_dir):
        manifest = read_manifest(sweep_dir) or Manifest(
            sweep_dir=str(sweep_dir.resolve()), wandb={}
        )
        manifest.wandb = {
            "mode": getattr(config.wandb.mode, "value", str(config.wandb.mode)),
            "project": config.wandb.project,
            "entity": config.wandb.entity,
            "group": sweep_group(config),
        }
        unknown = [job for job in finished if manifest.job(job.dir) is None]
        manifest.add(submission, jobs + unknown)
        write_manifest(sweep_dir, manifest)


def say_finished(sweep_dir: Path, jobs: list[Job], finished: list[Job]) -> None:
    if finished:
        print(
            f"{len(finished)} of {len(jobs) + len(finished)} jobs already finished in "
            f"{sweep_dir}: not launched again",
            flush=True,
        )


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
        jobs, finished = plan_jobs(self, job_overrides, initial_job_idx)
        say_finished(Path(str(self.config.hydra.sweep.dir)), jobs, finished)
        record_submission(self.config, "in-process", jobs, finished, wait=True)
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
        jobs, finished = plan_jobs(self, job_overrides, initial_job_idx)
        say_finished(sweep_dir, jobs, finished)
        if not jobs:
            record_submission(self.config, self._NAME, jobs, finished, self.wait)
            return []
        state = Singleton.get_state()
        arguments = [
            (job.overrides, "hydra.sweep.dir", job.num, f"job_id_for_{job.num}", state)
            for job in jobs
        ]
        with stderr_held_back():
            submitted = self._executor().map_array(self, *zip(*arguments, strict=True))
        # recorded once the scheduler took the jobs: a refused submission leaves no entry
        for job, scheduler_job in zip(jobs, submitted, strict=True):
            job.scheduler_id = scheduler_job.job_id
        array = submitted[0].job_id.partition("_")[0]
        record_submission(self.config, self._NAME, jobs, finished, self.wait, array)
        if self.wait:
            print_waiting(sweep_dir, self._NAME, submitted)
            return [job.results()[0] for job in submitted]
        print_submitted(sweep_dir, submitted)
        return [left_running(job.overrides) for job in jobs]

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


def print_waiting(sweep_dir: Path, name: str, submitted: list) -> None:
    where = "SLURM" if name == "slurm" else "this machine"
    print(
        f"started {len(submitted)} job{'s' if len(submitted) != 1 else ''} on {where}; waiting "
        f"for them (sweep directory: {sweep_dir}; follow it with python -m superposition.sweep "
        f"status {sweep_dir})",
        flush=True,
    )


class LocalSweepLauncher(_SweepSubmitit, LocalLauncher):
    _NAME = "local"


class SlurmSweepLauncher(_SweepSubmitit, SlurmLauncher):
    _NAME = "slurm"


@dataclass
class InProcessConf(BasicLauncherConf):
    _target_: str = f"{MODULE}.InProcessLauncher"


@dataclass
class LocalSweepConf(LocalQueueConf):
    _target_: str = f"{MODULE}.LocalSweepLauncher"


@dataclass
class SlurmSweepConf(SlurmQueueConf):
    _target_: str = f"{MODULE}.SlurmSweepLauncher"
    # return once the jobs are queued (false) or wait for every job to end (true)
    wait: bool = False


_store = ConfigStore.instance()
_store.store(group="hydra/launcher", name="superposition_in_process", node=InProcessConf)
_store.store(group="hydra/launcher", name="superposition_local", node=LocalSweepConf)
_store.store(group="hydra/launcher", name="superposition_slurm", node=SlurmSweepConf)
