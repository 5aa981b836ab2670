"""``drsf pretrain``: the warm start of a mini backbone from source training images only
(``drsf_kit.train.pretrain``); prints the weights file."""

from __future__ import annotations

import argparse

from drsf_kit.train.pretrain import PretrainConfig, pretrain, weights_path

# `drsf pretrain` defaults of the supervised warm start, per task: the protocol's settings (measured in
# docs/protocol.md section 3: 2,400 steps of 4 images, about 10.5 min on 2 cores, source test mAP50 91.4 /
# mIoU 74.2). The dataclass defaults (300 steps of 32 images) are SimCLR's.
SUPERVISED_CLI_DEFAULTS = {"det": {"steps": 2400, "batch_size": 4, "lr": 0.002},
                           "seg": {"steps": 2400, "batch_size": 4, "lr": 0.006}}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """`drsf pretrain`: train (or find) the cached warm start and print its path."""
    p = subparsers.add_parser("pretrain", help="warm start of the mini backbone from source training images only",
                              description="Train (or find) the warm start of a mini backbone from source training images only.")
    d = PretrainConfig()
    p.add_argument("--task", default=d.task, choices=["det", "seg"])
    p.add_argument("--data", default=d.data_root, help="DWD-layout data root (default %(default)s)")
    p.add_argument("--source", default=d.source_domain)
    p.add_argument("--split", default=d.split, help="source split to read (default %(default)s)")
    sup = SUPERVISED_CLI_DEFAULTS
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (default: supervised {sup['det']['steps']}, simclr {d.steps})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per step (default: supervised {sup['det']['batch_size']}, simclr {d.batch_size})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default: supervised det {sup['det']['lr']}, seg {sup['seg']['lr']}; "
                        f"simclr {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--objective", default=d.objective, choices=["supervised", "simclr"],
                   help="supervised: source_only run on the split's images and labels, whole model kept; "
                        "simclr: no labels (default %(default)s)")
    p.add_argument("--out", default=d.out, help="cache folder (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="retrain even when the cached file exists")
    p.add_argument("--print-path", action="store_true", help="only print where the file would be")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
    return p


def config_from_args(args) -> PretrainConfig:
    """The PretrainConfig of parsed CLI options; an option left out takes its objective's default."""
    d = PretrainConfig()
    base = SUPERVISED_CLI_DEFAULTS[args.task] if args.objective == "supervised" else \
        {"steps": d.steps, "batch_size": d.batch_size, "lr": d.lr}
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    chosen = {k: base[k] if v is None else v for k, v in given.items()}
    return PretrainConfig(task=args.task, data_root=args.data, source_domain=args.source, split=args.split,
                          seed=args.seed, objective=args.objective, out=args.out, **chosen)


def _run(args) -> int:
    cfg = config_from_args(args)
    print(weights_path(cfg) if args.print_path else pretrain(cfg, progress=not args.no_progress, overwrite=args.overwrite))
    return 0
