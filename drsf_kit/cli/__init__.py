"""The `drsf` command line: one sub-command per verb, each a thin call into the package.

Every verb lives in its own module of this package, which exposes ``add_parser(subparsers)``; that
function registers the sub-command and sets ``func`` (called with the parsed ``argparse.Namespace``; it
returns the process exit code). Only this package parses arguments: the libraries below it and the
workflows (``drsf_kit.workflows``) are plain functions.
"""

from __future__ import annotations

import argparse
import os
import sys

from drsf_kit import __version__
from drsf_kit.cli import app, batch, confirm, data, demo, gap, pretrain, protocol, synth, train, warm_start
from drsf_kit.errors import DrsfError

# verb -> function registering it on the sub-parsers; the order is the order of `drsf --help`
COMMANDS = {
    "data": data.add_parser,
    "synth": synth.add_parser,
    "pretrain": pretrain.add_parser,
    "train": train.add_parser,
    "eval": train.add_eval_parser,
    "gap": gap.add_parser,
    "protocol": protocol.add_parser,
    "confirm": confirm.add_parser,
    "batch": batch.add_parser,
    "demo": demo.add_parser,
    "warm-start": warm_start.add_parser,
    "app": app.add_parser,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="drsf",
        description="drsf_kit: single-domain generalization with synthetic data (DFDR + MDSF).",
    )
    parser.add_argument("--version", action="version", version=f"drsf_kit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS.values():
        register(sub)
    return parser


def known_error_message(exc: BaseException) -> str | None:
    """One line for an error caused by the user's input or machine, None for a bug (its traceback shows).

    Known: the kit's own errors (``DrsfError``) and file-system refusals naming a path (an unwritable
    or full output folder, a path that is a file where a folder is due).
    """
    if isinstance(exc, DrsfError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as given (recorded by some verbs)
    if extra:
        # KEY=VALUE overrides may also follow the options (`drsf train --config c.yaml --resume seed=1`):
        # argparse stops collecting a positional list at the first option, so gather the rest here
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear one-line message instead of a traceback for known errors
        message = known_error_message(exc)
        if message is not None and not (args.debug or os.environ.get("DRSF_TRACEBACK")):
            print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
            return 1
        raise
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
