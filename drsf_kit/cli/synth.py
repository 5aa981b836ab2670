"""`drsf synth`: generate pseudo-target domains; `drsf synth merge DIR`: join shard manifests."""

from __future__ import annotations

import argparse
import json

from drsf_kit.errors import ConfigError
from drsf_kit.synth.base import DEFAULT_SYNTH_DOMAINS, SynthConfig
from drsf_kit.synth.fidelity import check_gap, parse_level
from drsf_kit.synth.registry import GENERATORS
from drsf_kit.synth.runner import merge_shards, parse_shard, run_synth


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The generation options (shared by the CLI and ``config_from_args``)."""
    p.add_argument("--data", help="dataset root in DWD layout (ROOT/<domain>/VOC2007/...)")
    p.add_argument("--source", default="daytime_clear", help="labelled source domain (default daytime_clear)")
    p.add_argument("--domains", default=",".join(DEFAULT_SYNTH_DOMAINS),
                   help="comma-separated pseudo-target domains (default %(default)s)")
    p.add_argument("--backend", default="procedural", choices=list(GENERATORS),
                   help="generator (default procedural: no weights needed)")
    p.add_argument("--model", default=None, help="local diffusers folder, or a repo id in the local HF cache")
    p.add_argument("--controlnet", default=None, help="local ControlNet folder (controlnet backend)")
    p.add_argument("--condition", default="seg", choices=["seg", "edges"], help="controlnet condition")
    p.add_argument("--out", default="data/synth", help="output root (default %(default)s)")
    p.add_argument("--per-image", type=int, default=1, help="twins per source image and domain")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "fp32"],
                   help="auto = fp16 on cuda, fp32 on cpu")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--strength", type=float, default=0.6, help="img2img strength in (0, 1]")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, default=0,
                   help="gligen: square side (0 = 512); img2img/controlnet: longer side (0 = source size)")
    p.add_argument("--max-boxes", type=int, default=15, help="gligen skips images with more boxes")
    p.add_argument("--prompts", default=None, help="JSON/YAML file overriding prompts and phrase words")
    p.add_argument("--split", default="train", help="source split (default train)")
    p.add_argument("--limit", type=int, default=None, help="use the first N source ids (sorted)")
    p.add_argument("--min-consistency", type=float, default=0.0,
                   help="drop twins whose layout-consistency score is lower (0..1)")
    p.add_argument("--overwrite", action="store_true", help="regenerate finished images")
    p.add_argument("--shard", default=None, help="I/N: process sorted ids with position %% N == I")
    p.add_argument("--fidelity", default="clean",
                   help="procedural: generator failure modes, clean | ldm | ldm_gap | a strength >= 0 (default clean)")
    p.add_argument("--appearance-gap", type=float, default=None,
                   help="procedural: appearance gap in [0, 1] (default: the --fidelity level's, 0 for a number)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """Turn parsed CLI options into a SynthConfig (ConfigError when --data is missing)."""
    if not args.data:
        raise ConfigError("--data ROOT is required (the dataset root in DWD layout)")
    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    strength, gap = parse_level(args.fidelity)
    if args.appearance_gap is not None:
        gap = check_gap(args.appearance_gap)
    return SynthConfig(
        data=args.data, out=args.out, source=args.source, domains=domains, backend=args.backend,
        model=args.model, controlnet=args.controlnet, per_image=args.per_image, seed=args.seed,
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, steps=args.steps,
        strength=args.strength, guidance=args.guidance, prompts=args.prompts, split=args.split,
        limit=args.limit, min_consistency=args.min_consistency, overwrite=args.overwrite,
        shard=parse_shard(args.shard), size=args.size, max_boxes=args.max_boxes,
        condition=args.condition, progress=not args.no_progress, fidelity=strength,
        appearance_gap=gap,
    )


def _run(args: argparse.Namespace) -> int:
    summary = run_synth(config_from_args(args))
    brief = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(brief, indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    result = merge_shards(args.dir, allow_partial=args.allow_partial)
    print(json.dumps({"merged": result}, indent=2))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `drsf synth` (and its `merge` action)."""
    p = subparsers.add_parser(
        "synth", help="generate pseudo-target domains from a labelled source domain",
        description="Generate pseudo-target twins of the source images (labels reused). "
                    "`drsf synth merge DIR` joins shard manifests.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)
    actions = p.add_subparsers(dest="synth_action", metavar="{merge}")
    m = actions.add_parser("merge", help="join manifest.part-I-of-N.jsonl files into manifest.jsonl")
    m.add_argument("dir", help="output folder (searched recursively for shard parts)")
    m.add_argument("--allow-partial", action="store_true", help="merge even when some shards are missing")
    m.set_defaults(func=_merge)
    return p
