"""Redraw the figures of a finished run: `python -m superposition.figures OUTPUT_DIR`.

Reads results.json and weights.safetensors (and history.safetensors when present) from OUTPUT_DIR,
writes OUTPUT_DIR/plots/*.png and prints their paths. A directory that is not a finished run is
reported in one line, `error: ...`, with exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from superposition.config import ConfigError
from superposition.figures.run_figures import draw_all
from superposition.store.files import RESULTS, WEIGHTS
from superposition.store.results import ResultsError, read_results

EXPECTED = f"the output directory of a finished run, holding {RESULTS} and {WEIGHTS}"


def check_run_dir(out_dir: Path) -> str | None:
    """What is wrong with out_dir as a run to plot, in one line; None when nothing is."""
    if not out_dir.exists():
        return f"{out_dir} does not exist; expected {EXPECTED}"
    if not out_dir.is_dir():
        return f"{out_dir} is not a directory; expected {EXPECTED}"
    for name in (RESULTS, WEIGHTS):
        if not (out_dir / name).is_file():
            return f"{out_dir / name} is missing; expected {EXPECTED}"
    try:
        read_results(out_dir)
    except ResultsError as err:
        return f"{err}; expected {EXPECTED}"
    except (OSError, ValueError) as err:
        return f"{out_dir / RESULTS} is not readable JSON ({err}); expected {EXPECTED}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m superposition.figures",
        description="Redraw the figures of a finished run into OUTPUT_DIR/plots/.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path)
    args = parser.parse_args(argv)
    problem = check_run_dir(args.output_dir)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        paths = draw_all(args.output_dir)
    except ConfigError as err:  # e.g. the run's own task module moved away
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
