"""``drsf data``: build the embedded mini-weather benchmark (``make-mini``) and check datasets (``check``)."""

from __future__ import annotations

import argparse

from drsf_kit.config import DEFAULT_DATA_ROOT
from drsf_kit.data.check import FORMATS, check_dataset, format_report
from drsf_kit.data.mini_weather import make_mini_weather


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drsf data`` and its sub-verbs on ``subparsers``."""
    parser = subparsers.add_parser("data", help="build the mini-weather benchmark, check datasets",
                                   description="Build the embedded mini-weather benchmark and check dataset folders.")
    verbs = parser.add_subparsers(dest="data_command", metavar="VERB")
    parser.set_defaults(func=lambda args: _no_verb(parser))

    make = verbs.add_parser("make-mini", help="render the mini-weather benchmark (DWD layout + masks)",
                            description="Render the mini-weather benchmark, then check it.")
    make.add_argument("--out", default=DEFAULT_DATA_ROOT, help="output folder (default: %(default)s)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    make.add_argument("--n-train", type=int, default=800, help="source training images (default: %(default)s)")
    make.add_argument("--n-test", type=int, default=200, help="source test images (default: %(default)s)")
    make.add_argument("--n-target", type=int, default=200, help="images per target domain (default: %(default)s)")
    make.add_argument("--height", type=int, default=180, help="image height in pixels (default: %(default)s)")
    make.add_argument("--width", type=int, default=320, help="image width in pixels (default: %(default)s)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    make.add_argument("--no-progress", action="store_true", help="hide progress bars")
    make.set_defaults(func=run_make_mini)

    check = verbs.add_parser("check", help="check a dataset folder and list every problem",
                             description="Check a dataset folder: a per-domain table, then every problem. "
                                         "Exits 1 on errors (and on warnings with --strict).")
    check.add_argument("path", help="dataset root")
    check.add_argument("--format", choices=FORMATS, default="dwd", help="dataset layout (default: %(default)s)")
    check.add_argument("--strict", action="store_true", help="unknown classes are errors; warnings fail the check")
    check.add_argument("--domains", nargs="+", default=None, help="DWD domains to check (default: all found)")
    check.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    check.add_argument("--max-problems", type=int, default=200, help="problems to list, 0 = all (default: %(default)s)")
    check.add_argument("--no-progress", action="store_true", help="hide progress bars")
    check.set_defaults(func=run_check)
    return parser


def _no_verb(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_check(args: argparse.Namespace) -> int:
    """``drsf data check``: print the report; exit code 0 when the data passes."""
    report = check_dataset(args.path, format=args.format, strict=args.strict, domains=args.domains,
                           progress=not args.no_progress)
    print(format_report(report, markdown=args.markdown, max_problems=args.max_problems))
    return report.exit_code


def run_make_mini(args: argparse.Namespace) -> int:
    """``drsf data make-mini``: render the benchmark into ``--out``, then check it."""
    out = make_mini_weather(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                            n_target=args.n_target, height=args.height, width=args.width,
                            progress=not args.no_progress, overwrite=args.overwrite)
    print(f"mini-weather benchmark written to {out}")
    report = check_dataset(out, format="dwd", progress=not args.no_progress)
    print(format_report(report))
    return report.exit_code
