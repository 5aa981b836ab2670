"""``drsf protocol --task det|seg``: the kit's protocol, from the data build to the report
(``drsf_kit.workflows.protocol``; configured by ``configs/protocol/<task>.yaml``)."""

from __future__ import annotations

import argparse

from drsf_kit.workflows.protocol import run_protocol


def _list(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def add_parser(subparsers) -> None:
    """Register ``drsf protocol``."""
    p = subparsers.add_parser(
        "protocol", help="run the protocol (data, twins, warm start, every paired run) and write its report",
        description="Protocol v2: does DRSF make synthetic data help where naive synthetic training does not? "
                    "Builds the data, the twins of every fidelity level and the warm start, trains and "
                    "validates every (level, variant, seed) run (finished runs are skipped, stopped ones "
                    "resume), then writes sdg_protocol.json, sdg_protocol_<task>.md and .png "
                    "(docs/protocol.md).")
    p.add_argument("--task", choices=["det", "seg"], required=True)
    p.add_argument("--config", default=None, help="protocol YAML (default configs/protocol/<task>.yaml)")
    p.add_argument("--variants", default=None, help="comma list; default: the config's per-level lists")
    p.add_argument("--seeds", default=None, help="comma list (default: the config's)")
    p.add_argument("--fidelity", default=None, help="comma list of levels (default: every level of the config)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in all (default 2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained side by side, each with threads/jobs torch threads (on 2 cores a "
                        "source_only step takes 0.18 s with 1 thread and 0.14 s with 2, so --jobs 2 gets more done)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/N: a --jobs child's share of the runs
    p.add_argument("--skip-prepare", action="store_true", help=argparse.SUPPRESS)  # --jobs children: done by the parent
    p.add_argument("--prepare-only", action="store_true", help="build data, twins and the warm start, then stop")
    p.add_argument("--report-only", action="store_true", help="only collect finished runs and write the outputs")
    p.add_argument("--results", default=None,
                   help="folder of the report (default benchmarks/results; with --config: <output_dir>/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``drsf protocol``: hand the options to ``run_protocol``; the rows file records the command line."""
    seeds = _list(args.seeds)
    return run_protocol(args.task, config=args.config, variants=_list(args.variants),
                        seeds=[int(s) for s in seeds] if seeds else None, levels=_list(args.fidelity),
                        threads=args.threads, jobs=args.jobs, shard=args.shard, skip_prepare=args.skip_prepare,
                        prepare_only=args.prepare_only, report_only=args.report_only, results=args.results,
                        command=" ".join(["drsf", *args.argv]))
