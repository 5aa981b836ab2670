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

# verb -> module providing add_parser(subparsers); the order is the order of `drsf --help`.
COMMAND_MODULES = {
    "data": "drsf_kit.data.cli",
    "synth": "drsf_kit.synth.cli",
    "train": "drsf_kit.train.cli",
    "pretrain": "drsf_kit.train.pretrain",
    "eval": "drsf_kit.evaluation.cli",
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, module_name in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing sub-command module is tolerated; a missing dependency is a real error.
            if exc.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


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
        from drsf_kit.errors import DrsfError

        if isinstance(exc, DrsfError) and not os.environ.get("DRSF_TRACEBACK"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
