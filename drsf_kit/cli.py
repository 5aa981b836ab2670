"""The `drsf` command line: one sub-command per verb, each a thin call into the package.

Every sub-command lives in its own module, which exposes ``add_parser(subparsers)``; that function
registers the sub-command and sets ``func`` (called with the parsed ``argparse.Namespace``; it returns
the process exit code). Sub-commands whose module is not part of this installation are left out.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> module providing add_parser(subparsers) (or "module:function" naming another registrar);
# the order is the order of `drsf --help`. `eval` scores a run folder, which the training package owns.
COMMAND_MODULES = {
    "data": "drsf_kit.data.cli",
    "synth": "drsf_kit.synth.cli",
    "train": "drsf_kit.train.cli",
    "pretrain": "drsf_kit.train.pretrain",
    "eval": "drsf_kit.train.cli:add_eval_parser",
    "gap": "drsf_kit.analysis.cli",
    "batch": "drsf_kit.batch",
    "demo": "drsf_kit.demo",
    "app": "drsf_kit.app",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available sub-command registered."""
    from drsf_kit import __version__

    parser = argparse.ArgumentParser(
        prog="drsf",
        description="drsf_kit: single-domain generalization with synthetic data (DFDR + MDSF).",
    )
    parser.add_argument("--version", action="version", version=f"drsf_kit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, target in COMMAND_MODULES.items():
        module_name, _, registrar = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing sub-command module is tolerated; a missing dependency is a real error.
            if exc.name == module_name:
                continue
            raise
        getattr(module, registrar or "add_parser")(sub)
    return parser


def known_error_message(exc: BaseException) -> str | None:
    """One line for an error caused by the user's input or machine, None for a bug (its traceback shows).

    Known: the kit's own errors (``DrsfError``) and file-system refusals naming a path (an unwritable
    or full output folder, a path that is a file where a folder is due).
    """
    from drsf_kit.errors import DrsfError

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
