"""python -m superposition.sweep status|collect SWEEP_DIR: a multirun's jobs and results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from superposition.sweep.manifest import ManifestError, sweep_manifest
from superposition.sweep.status import JOB_STATES, sweep_status, total_line


def status(sweep_dir: Path, as_json: bool) -> int:
    manifest = sweep_manifest(sweep_dir)
    statuses = sweep_status(sweep_dir, manifest)
    if as_json:
        jobs = [
            {"dir": s.job.dir, "label": s.label, "state": s.state, "detail": s.detail}
            | {"requeues": s.requeues, "scheduler_id": s.job.scheduler_id}
            for s in statuses
        ]
        print(json.dumps({"jobs": jobs, "total": total_line(statuses)}, indent=2))
        return 0
    width = max(len(s.label) for s in statuses)
    for s in statuses:
        print(s.line(width))
    print(total_line(statuses))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m superposition.sweep",
        description="A multirun's jobs and results, from its sweep directory.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    state = commands.add_parser(
        "status", help=f"one line per job ({', '.join(JOB_STATES)}) and a total"
    )
    state.add_argument("sweep_dir", type=Path)
    state.add_argument("--json", action="store_true", help="the same as JSON")
    collect = commands.add_parser(
        "collect", help="every finished job into sweep.csv/json, figures, sweep.md and W&B"
    )
    collect.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        if args.command == "status":
            return status(args.sweep_dir, args.json)
        from superposition.sweep.collect import collect as collect_sweep

        return collect_sweep(args.sweep_dir)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... status SWEEP | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
