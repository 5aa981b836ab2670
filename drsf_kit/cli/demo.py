"""``drsf demo``: build the embedded data and run notebooks 00-09 in order (``drsf_kit.workflows.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from drsf_kit.config import DEFAULT_RUNS_DIR
from drsf_kit.workflows.demo import DEFAULT_DATA, run_demo


def add_parser(subparsers) -> None:
    """Register `drsf demo`."""
    p = subparsers.add_parser("demo", help="build the embedded data and run notebooks 00-09 in order")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the embedded data goes")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded benchmark")
    p.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="notebook folder")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_RUNS_DIR), help="executed notebooks and results")
    p.add_argument("--smoke", action="store_true", help="run the notebooks with SMOKE=True (minutes less)")
    p.add_argument("--skip-notebooks", action="store_true", help="only build and check the data")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 00 01")
    p.add_argument("--max-steps", type=int, default=0,
                   help="training steps per demo run (default 0: the schedule of configs/demo_*.yaml)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.data, args.seed, args.notebooks, args.out, smoke=args.smoke,
                    skip_notebooks=args.skip_notebooks, only=args.only, max_steps=args.max_steps)
