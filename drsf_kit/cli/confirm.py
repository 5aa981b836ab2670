"""``drsf confirm``: the pre-registered confirmation's contrasts, tests and report
(``drsf_kit.workflows.confirm``; planned in ``configs/protocol/confirm/plan.yaml`` and docs/preregistration.md)."""

from __future__ import annotations

import argparse

from drsf_kit.workflows.confirm import run_confirm


def add_parser(subparsers) -> None:
    """Register ``drsf confirm``."""
    p = subparsers.add_parser(
        "confirm", help="collect the pre-registered confirmation's runs and write its tests and report",
        description="Reads every finished run of the confirmation's builds (trained by `drsf protocol --config "
                    "configs/protocol/confirm/<task>_b<build>.yaml`), pairs them by (build, seed), and writes "
                    "sdg_confirm.json, sdg_confirm.md and sdg_confirm.png: exact sign-flip p-values, Holm, t "
                    "intervals and the pre-registered verdicts (interim, without verdicts, until every cell is full).")
    p.add_argument("--plan", default=None, help="the plan YAML (default configs/protocol/confirm/plan.yaml)")
    p.add_argument("--runs-root", default=None, help="the checkout the runs were trained in (default: this project)")
    p.add_argument("--results", default=None, help="folder of the outputs (default benchmarks/results)")
    p.add_argument("--earlier", default=None,
                   help="a previous sdg_confirm.json whose rows stand in for builds with no run folder under --runs-root "
                        "(same trained commit required; each build's source is recorded and printed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``drsf confirm``: write the outputs and print the report's path."""
    print(run_confirm(args.plan, runs_root=args.runs_root, results=args.results, command=" ".join(["drsf", *args.argv]),
                      earlier=args.earlier))
    return 0
