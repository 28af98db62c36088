"""`python -m superposition.sweep collect SWEEP_DIR`: the sweep's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from superposition.sweep.collect import collect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m superposition.sweep", description="A multirun as one unit."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    collecting = commands.add_parser(
        "collect",
        help="the finished jobs' results as one table, figures, sweep.md and a W&B run",
        description="Collect the sweep's finished jobs into SWEEP_DIR: sweep.csv, sweep.json, "
        "plots/, sweep.md and a W&B run of job type 'sweep'. Run it again as jobs finish.",
    )
    collecting.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    args = parser.parse_args(argv)
    if args.command == "collect":
        return collect(args.sweep_dir)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
