"""manifest.json in a sweep directory: the jobs of every submission to it.

Written by the launchers (hydra_plugins/superposition_launchers) before the jobs start: each job's
overrides, its directory (named after its overrides, not its number, so that a job keeps its
directory when the swept lists grow or are reordered), its job number in the submission that last
launched it and, on a cluster, its scheduler id. A second submission to the same sweep directory
adds its new jobs and updates the ones it launched again; jobs it does not name stay listed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from superposition.store.files import write_json

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(ValueError):
    """manifest.json cannot be read as a sweep's manifest; the message says why in one line."""


@dataclass
class Submission:
    time: str
    launcher: str  # in-process, local or slurm
    argv: list[str]
    host: str
    pid: int
    wait: bool
    # the SLURM array's job id (local: the first job's id); None in-process
    scheduler_job_id: str | None = None


@dataclass
class Job:
    # the job's directory, relative to the sweep directory
    dir: str
    overrides: list[str]
    num: int
    submission: int  # index into Manifest.submissions of the one that last launched it
    scheduler_id: str | None = None  # SLURM: ARRAYID_INDEX
    # job.config_fingerprint of its config: the run its directory must hold
    fingerprint: str | None = None

    @property
    def override_values(self) -> dict[str, str]:
        """key → value of each override as given on the command line."""
        pairs = (o.lstrip("+~").partition("=") for o in self.overrides)
        return {key: value for key, _, value in pairs}


@dataclass
class Manifest:
    sweep_dir: str
    # W&B settings of the sweep: mode, project, entity, group
    wandb: dict
    submissions: list[Submission] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def job(self, directory: str) -> Job | None:
        return next((job for job in self.jobs if job.dir == directory), None)

    def add(self, submission: Submission, jobs: list[Job]) -> None:
        """Record a submission: its jobs replace those with the same directory, new ones are
        appended; jobs' submission index is set to this one."""
        self.submissions.append(submission)
        index = len(self.submissions) - 1
        for job in jobs:
            job.submission = index
            known = self.job(job.dir)
            if known is None:
                self.jobs.append(job)
            else:
                self.jobs[self.jobs.index(known)] = job

    def swept_keys(self) -> list[str]:
        """The override keys whose values differ between jobs, in first-seen order; every key
        when all jobs agree (a sweep of one job)."""
        keys: list[str] = []
        for job in self.jobs:
            keys += [key for key in job.override_values if key not in keys]
        varying = [
            key for key in keys if len({job.override_values.get(key) for job in self.jobs}) > 1
        ]
        return varying or keys

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, payload: object) -> Manifest:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ManifestError(f"is not a sweep manifest of format {FORMAT}")
        try:
            return cls(
                sweep_dir=payload["sweep_dir"],
                wandb=dict(payload["wandb"]),
                submissions=[Submission(**s) for s in payload["submissions"]],
                jobs=[Job(**j) for j in payload["jobs"]],
            )
        except (KeyError, TypeError) as err:
            raise ManifestError(f"is not a sweep manifest ({type(err).__name__}: {err})") from None


def read_manifest(sweep_dir: Path) -> Manifest | None:
    """The sweep's manifest; None when there is none; ManifestError when it cannot be read."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} cannot be read ({type(err).__name__})") from None
    try:
        return Manifest.from_json(payload)
    except ManifestError as err:
        raise ManifestError(f"{path} {err}") from None


def write_manifest(sweep_dir: Path, manifest: Manifest) -> None:
    write_json(Path(sweep_dir) / MANIFEST, manifest.to_json())


def discovered_jobs(sweep_dir: Path) -> list[Job]:
    """Jobs of a sweep directory without a manifest (a sweep of an earlier version, or a
    multirun launched by another launcher): every subdirectory with Hydra's
    .hydra/overrides.yaml, in name order."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        directory = overrides_file.parent.parent
        try:
            overrides = yaml.safe_load(overrides_file.read_text()) or []
        except (OSError, yaml.YAMLError):
            continue
        num, _, _ = directory.name.partition("_")
        jobs.append(
            Job(
                dir=directory.name,
                overrides=[str(o) for o in overrides],
                num=int(num) if num.isdigit() else len(jobs),
                submission=0,
            )
        )
    return jobs


def sweep_manifest(sweep_dir: Path) -> Manifest:
    """The sweep's manifest, or one made from its job directories when it has none; ManifestError
    when the directory holds neither."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    if manifest is not None:
        return manifest
    jobs = discovered_jobs(sweep_dir)
    if not jobs:
        raise ManifestError(
            f"{sweep_dir} is not a sweep directory: it has no {MANIFEST} and no job directories "
            "(*/.hydra/overrides.yaml)"
        )
    return Manifest(sweep_dir=str(sweep_dir.resolve()), wandb={}, jobs=jobs)
