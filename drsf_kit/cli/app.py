"""``drsf app``: serve the ablation dashboard and the MDSF explorer on 127.0.0.1 (``drsf_kit.workflows.app``)."""

from __future__ import annotations

import argparse

from drsf_kit.workflows.app import IDLE_TIMEOUT, MAX_KERNELS, serve


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `drsf app`."""
    p.add_argument("--runs", default=None, help="folder of runs, results.jsonl or JSON rows file "
                   "(default: runs/demo, else benchmarks/results/sdg_mini.json; `drsf demo` makes runs/demo)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--notebook", default=None, help="page to serve (default app/drsf_dashboard.ipynb)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token: trusted single-user machines only (anyone on the machine can use it)")
    p.add_argument("--idle-timeout", type=int, default=IDLE_TIMEOUT,
                   help=f"seconds before an idle page kernel is shut down (default {IDLE_TIMEOUT}; 0 never)")
    p.add_argument("--max-kernels", type=int, default=MAX_KERNELS,
                   help=f"page kernels running at once at most, about 850 MB each (default {MAX_KERNELS})")


def _run(args: argparse.Namespace) -> int:
    return serve(args.runs, args.port, args.notebook, token=not args.no_token, idle_timeout=args.idle_timeout,
                 max_kernels=args.max_kernels)


def add_parser(subparsers) -> None:
    """Register `drsf app`."""
    p = subparsers.add_parser("app", help="serve the ablation dashboard and MDSF explorer on 127.0.0.1 (Voilà)")
    add_arguments(p)
    p.set_defaults(func=_run)
