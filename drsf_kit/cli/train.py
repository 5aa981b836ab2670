"""`drsf train` and `drsf eval`: thin calls into ``drsf_kit.train.engine.fit`` and ``evaluate_run``.

``add_parser`` registers ``train``; ``add_eval_parser`` registers ``eval`` (scoring a run folder is the
training package's business, not ``evaluation``'s).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from drsf_kit.config import config_to_dict, load_config
from drsf_kit.data.dwd import PROTOCOLS
from drsf_kit.errors import ConfigError
from drsf_kit.train.engine import fit
from drsf_kit.train.evaluate import SUMMARY_METRIC, evaluate_run
from drsf_kit.train.rundir import RunDir
from drsf_kit.utils.runtime import default_num_threads


def add_parser(subparsers) -> None:
    """Register `drsf train`."""
    p = subparsers.add_parser(
        "train", help="train a variant from a YAML config plus key=value overrides",
        description="Train one run. Overrides use the config's dotted names, e.g. "
                    "`drsf train --config configs/mini_det.yaml variant=drsf seed=1 train.max_steps=200`. "
                    "Several GPUs or machines: `torchrun --nproc_per_node=N -m drsf_kit train ...` "
                    "(docs/scaling.md).",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest good checkpoint (also a finished run, to a larger "
                        "train.max_steps); refused when there is no checkpoint, unless --start-over")
    p.add_argument("--start-over", action="store_true",
                   help="with --resume: train from step 0 in the same folder when there is nothing to resume")
    p.add_argument("--reuse-anyway", action="store_true",
                   help="with --resume: continue even though the saved config differs from this one")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=run_train)


def add_eval_parser(subparsers) -> None:
    """Register `drsf eval`."""
    p = subparsers.add_parser(
        "eval", help="evaluate a trained run on chosen domains; append tidy rows and write tables",
        description="Score RUN_DIR's checkpoints/last.pt, append rows to RUN_DIR/results.jsonl and write the "
                    "per-domain and per-class tables into RUN_DIR.",
    )
    p.add_argument("--run", type=Path, required=True, help="run folder (holds config.json and checkpoints/)")
    p.add_argument("--domains", nargs="+", default=None, help="domains to score (default: source + targets)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None, help="target split protocol (default: the run's)")
    p.add_argument("--max-images", type=int, default=None, help="cap on images per domain")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


def _threads() -> None:
    torch.set_num_threads(default_num_threads())


def run_train(args: argparse.Namespace) -> int:
    """`drsf train`: load the config, apply overrides, call ``fit``."""
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return 0
    _threads()
    if (args.start_over or args.reuse_anyway) and not args.resume:
        raise ConfigError("--start-over and --reuse-anyway only apply with --resume")
    run_dir = fit(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                  start_over=args.start_over, reuse_anyway=args.reuse_anyway)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(f"run folder: {run_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`drsf eval`: score a run and print its headline metric per domain."""
    _threads()
    rows = evaluate_run(args.run, domains=args.domains, protocol=args.protocol, device=args.device,
                        progress=not args.no_progress, max_images=args.max_images)
    for row in rows:
        if row["class"] is None and row["metric"] == SUMMARY_METRIC[row["task"]]:
            value = "n/a" if row["value"] is None else f"{100 * row['value']:.1f}%"
            print(f"{row['domain']:>14s} ({row['split']}, {row['protocol']}): {row['metric']} {value}")
    if rows and "max_images" in rows[0]:  # a quick look on fewer images: kept apart from the run's results
        print(f"rows written to {RunDir(args.run).capped_results_path} (at most {args.max_images} images per "
              f"domain; results.jsonl and the tables are unchanged)")
        return 0
    print(f"rows written to {RunDir(args.run).results_path}; tables written to {args.run}")
    return 0
