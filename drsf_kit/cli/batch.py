"""``drsf batch``: run a notebook over a parameter grid (``drsf_kit.workflows.sweep``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drsf_kit.workflows.sweep import format_summary, parse_assignment, parse_grid, run_grid


def run_batch(args: argparse.Namespace) -> int:
    """``drsf batch``: run the grid, print the summary; exit code 1 when a point failed."""
    grid = parse_grid(args.grid)
    base = dict(parse_assignment(p) for p in (args.parameter or []))
    df = run_grid(
        args.notebook,
        grid,
        out_dir=args.out,
        base_parameters=base,
        kernel_name=args.kernel,
        timeout=args.timeout,
        progress=not args.no_progress,
    )
    print(format_summary(df))
    failed = df[df["status"] == "failed"]
    for _, row in failed.iterrows():
        print(f"failed: {row['point']}: see {Path(row['folder']) / 'error.txt'}", file=sys.stderr)
    return 1 if len(failed) else 0


def add_parser(subparsers) -> None:
    """Register ``drsf batch NOTEBOOK --grid ... [--out DIR] [-p KEY=VALUE ...]``."""
    parser = subparsers.add_parser(
        "batch",
        help="run a notebook over a parameter grid with papermill",
        description="Run NOTEBOOK once per point of a parameter grid (papermill). Each point writes into "
        "OUT/<notebook-stem>-<hash of its parameters>/; points already done are skipped; a failed "
        "point is recorded in its error.txt and the exit code is 1 at the end.",
    )
    parser.add_argument("notebook", help="the .ipynb to run (needs a cell tagged 'parameters')")
    parser.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2",
        help='grid axes, e.g. --grid "VARIANTS=source_only,naive_synth,drsf SEED=0,1,2"',
    )
    parser.add_argument("--out", default="runs/batch", help="folder for the point folders (default: runs/batch)")
    parser.add_argument(
        "-p", "--parameter", action="append", metavar="KEY=VALUE", help="a value shared by every point (repeatable)"
    )
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: this Python interpreter)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_batch)
