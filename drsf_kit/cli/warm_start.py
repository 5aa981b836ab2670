"""``drsf warm-start --task det|seg``: (re)make a shipped warm start of the demo and print its path and sha256."""

from __future__ import annotations

import argparse
import hashlib

from drsf_kit.workflows.runs import make_warm_start


def add_parser(subparsers) -> None:
    """Register ``drsf warm-start``."""
    p = subparsers.add_parser(
        "warm-start", help="train the demo's source-only run and export its weights (data/warm_start/)",
        description="Train (or find) the source-only run of configs/mini_<task>.yaml in runs/warm_start and "
                    "export its weights to data/warm_start/mini_<task>_source_only.pt, the file the demo's "
                    "configs load; prints the path and its sha256.")
    p.add_argument("--task", choices=["det", "seg"], required=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_warm_start)


def run_warm_start(args: argparse.Namespace) -> int:
    """``drsf warm-start``: make the file, print where it is and its sha256."""
    path = make_warm_start(args.task, progress=not args.no_progress)
    print(f"{path} sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0
