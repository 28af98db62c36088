"""Hydra entry point: `python -m superposition.run task=abs sweep=sparsity`."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from submitit.core.utils import FailedJobError, UncompletedJobError

from superposition import tasks
from superposition.analysis.verdicts import check_preset
from superposition.config import Config, ConfigError, register_configs, validate
from superposition.engine import resolve_engine
from superposition.engine.device import resolve_device
from superposition.job import check_directory, check_fits_in_memory, model_spec, run_job
from superposition.store.checkpoint import TrainingInterrupted
from superposition.store.outdir import check_usable, exclusive
from superposition.store.progress import Progress, write_progress

register_configs()

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# job numbers of a multirun's refused jobs (printed as they happen)
FAILED_JOBS: list[int] = []

USER_ERRORS = (
    ConfigError,
    ConfigCompositionException,
    OverrideParseException,
    OmegaConfBaseException,
)


def to_config(cfg: DictConfig) -> Config:
    """The composed DictConfig as the validated dataclass tree."""
    config = OmegaConf.to_object(cfg)
    validate(config)
    tasks.check_config(config)
    check_preset(config)
    resolve_engine(model_spec(config), config.train.engine)
    resolve_device(config.device)
    check_fits_in_memory(config)
    return config


GROUPS = tuple(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))


def check_group_choices(args: list[str]) -> None:
    """A config group's choice is a plain name from its folder (Hydra would follow a path)."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        choices = [c for c in value.split(",") if c]  # a multirun sweeps a,b
        for choice in choices:
            if choice in ("null", "None"):
                raise ConfigError(
                    f"{key}={choice}: {key} takes a name, not null (leave {key}= out for its "
                    "default)"
                )
            if not choice.replace("_", "").replace("-", "").isalnum():
                allowed = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
                raise ConfigError(
                    f"{key}={choice}: a choice is a plain name; allowed: {', '.join(allowed)}"
                )


def check_output_dirs(args: list[str]) -> None:
    """An empty hydra.run.dir / hydra.sweep.dir would put a run's files in the current folder."""
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir") and not value.strip():
            raise ConfigError(
                f"{key} is empty; give a directory, or leave {key}= out for the default under "
                "outputs/"
            )


def given_dir(args: list[str]) -> Path | None:
    """hydra.run.dir (a run) or hydra.sweep.dir (a multirun) when given as a plain path."""
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in args) else "hydra.run.dir"
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name == key and "${" not in value:
            return Path(value)
    return None


def validate_single_run(args: list[str]) -> Config | None:
    """Compose and check a plain run's config before Hydra creates its output directory, so
    bad input leaves nothing behind; return it. Multirun and Hydra's own flags are left to
    Hydra (None)."""
    if any(arg.startswith("-") for arg in args):
        return None
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        config = to_config(compose("config", overrides=args))
    if any(arg.startswith("cluster=") for arg in args):
        print(
            "warning: cluster= applies to multiruns (-m); this single run stays in this process",
            file=sys.stderr,
        )
    return config


def describe_user_error(err: BaseException) -> str:
    """One line that names the offending key and what it allows."""
    if isinstance(err, MissingConfigException) and err.options:
        group, _, choice = (err.missing_cfg_file or "").rpartition("/")
        return f"{group}={choice} is not a known choice; allowed: {', '.join(sorted(err.options))}"
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = cause.msg.splitlines()[0] if cause.msg else type(cause).__name__
        return f"{cause.full_key}: {message}"
    return " ".join(str(err).split())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    if "SUBMITIT_EXECUTOR" in os.environ:
        # a submitit job: say in its own log why it failed, not only in the submitter's output
        try:
            run_configured(cfg)
        except USER_ERRORS as err:
            print(f"error: {describe_user_error(err)}", file=sys.stderr)
            record_refusal(err)
            raise
        except Exception:
            traceback.print_exc()
            raise
    elif HydraConfig.get().mode == RunMode.MULTIRUN:
        # jobs one after another in this process: a refused job says so in one line and the
        # sweep goes on (main exits non-zero at the end); an interrupt stops the sweep
        try:
            run_configured(cfg)
        except TrainingInterrupted as err:
            exit_with(err)
        except USER_ERRORS as err:
            job = HydraConfig.get().job
            print(
                f"error: job {job.num} ({job.override_dirname}): {describe_user_error(err)}",
                file=sys.stderr,
            )
            record_refusal(err)
            FAILED_JOBS.append(job.num)
    else:
        # exit from inside the job: raised through Hydra, the error would be preceded by Hydra's
        # "Error executing job with overrides: [...]" line
        try:
            run_configured(cfg)
        except (*USER_ERRORS, TrainingInterrupted) as err:
            exit_with(err)


def record_refusal(err: BaseException) -> None:
    """A multirun job refused before it trained says why in its progress.json, for `sweep
    status`; not where another run holds the directory (its progress is that run's)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with exclusive(out_dir, record=False):
            write_progress(out_dir, Progress("failed", error=f"error: {describe_user_error(err)}"))
    except (OSError, ConfigError):
        pass


def run_configured(cfg: DictConfig) -> None:
    config = to_config(cfg)
    hydra_config = HydraConfig.get()
    out_dir = Path(hydra_config.runtime.output_dir)
    name = f"{config.task.name}_{config.model.n_features}to{config.model.d_hidden}"
    group = None
    if hydra_config.mode == RunMode.MULTIRUN:
        name = f"{hydra_config.job.num}_{name}"
        group = "_".join(Path(hydra_config.sweep.dir).parts[-2:])
    run_job(
        config,
        out_dir,
        run_name=name,
        group=group,
        tracked_config=OmegaConf.to_container(cfg, resolve=True),
    )


def exit_with(err: BaseException) -> NoReturn:
    """One line on stderr for a user error or an interrupt, and its exit status."""
    if isinstance(err, TrainingInterrupted):
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
    print(f"error: {describe_user_error(err)}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    # Hydra re-raises instead of printing its own multi-line report, so user errors become one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_group_choices(sys.argv[1:])
        check_output_dirs(sys.argv[1:])
        config = validate_single_run(sys.argv[1:])
        out_dir = given_dir(sys.argv[1:])
        if config is not None and out_dir is not None:
            # before Hydra records this run's config in a directory the job would refuse
            check_directory(config, out_dir)
        # the default is a new dated folder under outputs/
        check_usable(out_dir or Path("outputs"))
        hydra_main()
        if FAILED_JOBS:
            sys.exit(2)
    except (*USER_ERRORS, TrainingInterrupted) as err:
        exit_with(err)
    except (FailedJobError, UncompletedJobError) as err:
        # the cluster refused a job or one ended without a result (cancelled, killed)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
