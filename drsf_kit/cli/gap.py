"""``drsf gap``: the feature-space gap between pseudo-domains and real targets (``drsf_kit.workflows.gap``)."""

from __future__ import annotations

import argparse

from drsf_kit.workflows.gap import DEFAULT_CACHE, DEFAULT_OUT, run_gap


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drsf gap``."""
    p = subparsers.add_parser(
        "gap", help="feature-space gap between pseudo-domains and real targets (tables + figures)",
        description="Extract features of real and synthetic images at one stage of a model, measure "
                    "MMD / Frechet distance / domain-classifier accuracy for every (pseudo-domain, real "
                    "target) pair and the source, and draw t-SNE, PCA, heatmap, entropy and attribution figures.")
    p.add_argument("--data", required=True, help="DWD-layout root with the real domains")
    p.add_argument("--synth", default=None, help="folder of generated pseudo-domains (manifest.jsonl files)")
    p.add_argument("--run", default=None, help="run folder of a trained model (default: an untrained backbone)")
    p.add_argument("--stage", default=None, help="stage (module name) to take features from")
    p.add_argument("--limit", type=int, default=64, help="images per domain and kind (default 64)")
    p.add_argument("--split", default=None, choices=("train", "test", "all"),
                   help="image set of every real domain (default: source train, targets all)")
    p.add_argument("--task", choices=("det", "seg"), default="det", help="backbone family without --run")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--figures", default=None, help="figure folder (default <out>/figures)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"feature cache folder (default {DEFAULT_CACHE}); "
                   "'none' disables it")
    p.add_argument("--compare", default=None, help="an earlier gap_table.json to compare with (before/after)")
    p.add_argument("--metric", choices=("mmd", "frechet", "domain_acc"), default="mmd",
                   help="metric that picks the closest pseudo-domain (default mmd)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, nargs=2, default=[180, 320], metavar=("H", "W"),
                   help="every image is resized to H x W before the model (default 180 320)")
    p.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    result = run_gap(args.data, args.synth, run_dir=args.run, stage=args.stage, limit=args.limit, split=args.split,
                     task=args.task, out_dir=args.out, figures_dir=args.figures,
                     cache_dir=None if str(args.cache).lower() == "none" else args.cache,
                     compare=args.compare, closest_by=args.metric, device=args.device,
                     batch_size=args.batch_size, seed=args.seed, figures=not args.no_figures,
                     size=tuple(args.size), ig_steps=args.ig_steps)
    print(f"stage {result['stage']} of {result['model']}; {result['n_images']} images")
    for line in result["summary"]:
        print(line)
    print(f"tables: {result['out_dir']}")
    if result["figures"]:
        print(f"figures: {', '.join(str(p) for p in result['figures'])}")
    return 0
