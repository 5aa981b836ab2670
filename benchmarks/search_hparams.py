"""Random search of DRSF hyperparameters, scored on held-out source and pseudo-domain images only.

Selection never looks at a target domain: the last ``--val-frac`` of the source training images are held
out with their generated twins (every pseudo-domain), the model trains on the rest, and a trial's score
is the mean of the task metric (detection: VOC07 mAP@0.5; segmentation: mIoU) over the held-out source
images and over each pseudo-domain's twins of them. Each trial draws the keys of one block (``--block
dfdr``, ``mdsf`` or ``all``) from ``drsf_kit.models.hparams.HPARAM_RANGES``; the other keys keep their
defaults.

Every (trial, validation domain) is one tidy row in ``--out`` (JSON lines): task, variant, block, trial,
seed, steps, the drawn hparams (as JSON), the domain (``source`` or ``pseudo:<name>``), metric and
value; plus one row per trial with domain ``mean``.

Usage::

    python benchmarks/search_hparams.py --task det --variant drsf --block mdsf --trials 8 --steps 300 \\
        data.root=data/mini-weather data.synth_root=data/synth/procedural

A full search is long (trials x steps); ``--steps 2 --trials 2`` checks the plumbing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from drsf_kit.config import load_config
from drsf_kit.data.classes import DWD_CLASSES
from drsf_kit.models.dfdr import DFDRHparams
from drsf_kit.models.hparams import hparam_keys, random_hparams
from drsf_kit.models.mdsf import MDSFHparams
from drsf_kit.data.twins import TwinCollate, TwinItem
from drsf_kit.train.data import build_train_set
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.train.engine import build_model_for, build_optimizer, build_scheduler, train_step
from drsf_kit.utils.io import append_jsonl

ROOT = Path(__file__).resolve().parents[1]
BLOCK_KEYS = {"dfdr": DFDRHparams.field_names(), "mdsf": MDSFHparams.field_names()}
CENTRE = (0.5, 0.5, 0.5)  # validation images: the centre crop (no crop at full scale), no flip


def block_keys(variant: str, block: str) -> list[str]:
    """The hparam keys a trial draws: those of ``block`` that ``variant`` uses (never ``method``)."""
    keys = [k for k in hparam_keys(variant) if k != "method"]
    if block != "all":
        keys = [k for k in keys if k in BLOCK_KEYS[block]]
    return keys


def split_sources(n: int, val_frac: float) -> tuple[int, int]:
    """(train, validation) counts: the last ``val_frac`` of the source images (at least one) are held out."""
    n_val = max(1, int(round(n * val_frac)))
    if n_val >= n:
        raise SystemExit(f"--val-frac {val_frac} leaves no training image out of {n}")
    return n - n_val, n_val


def validation_sets(train_set, first: int, domain_names: dict[int, str]) -> dict[str, list]:
    """Held-out (image, target) lists: ``source`` and one per pseudo-domain (the twins of the same images)."""
    sets: dict[str, list] = {"source": []}
    for s in range(first, len(train_set.twin_table)):
        out = train_set[TwinItem(s, -1, 0, False, CENTRE)]
        sets["source"].append((train_set.source.ids[s], *out["source"]))
        for d, copies in sorted(train_set.twin_table[s].items()):
            twin = train_set[TwinItem(s, copies[0], d, False, CENTRE)]["twin"]
            # "pseudo:" keeps generated twins apart from the real target domain of the same name
            sets.setdefault(f"pseudo:{domain_names[d]}", []).append((train_set.source.ids[s], *twin))
    return sets


@torch.no_grad()
def score(model, task: str, items: list) -> float:
    """mAP@0.5 (VOC07) or mIoU of ``model`` on ``(id, image, target)`` items."""
    from drsf_kit.evaluation.detection import evaluate_detections
    from drsf_kit.evaluation.segmentation import evaluate_segmentation

    model.eval()
    if task == "det":
        preds, targets = {}, {}
        for image_id, image, target in items:
            preds[image_id] = model([image])[0]
            targets[image_id] = {k: target[k] for k in ("boxes", "labels", "difficult") if k in target}
        result = evaluate_detections(preds, targets, DWD_CLASSES, metrics=("voc07",))
        return float(result["map50_voc07"])
    pairs = [(model(image[None]).argmax(1), target[None].long()) for _, image, target in items]
    return float(evaluate_segmentation(pairs, progress=False)["miou"])


def run_trial(cfg, train_set, n_train: int, hp: dict, steps: int, seed: int):
    """Train a fresh model on the first ``n_train`` source images for ``steps`` steps; return it."""
    cfg = dataclasses.replace(cfg, seed=seed, model=dataclasses.replace(cfg.model, hparams=dict(hp)))
    torch.manual_seed(seed)
    model = build_model_for(cfg)
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    sampler = TwinBatchSampler(train_set.twin_table[:n_train], cfg.train.batch_source, seed,
                               twins_per_source=getattr(model, "twins_per_source", 1), hflip=cfg.train.hflip)
    collate = TwinCollate(cfg.task)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for b in range(steps):
        batch = collate([train_set[it] for it in sampler.batch(b)])
        train_step(model, batch, optimizer, torch.device("cpu"), step=b + 1, progress=b / max(1, steps),
                   scheduler=scheduler, generator=generator, grad_clip=cfg.train.grad_clip)
    return model


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the trials, append the rows; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="det", choices=["det", "seg"])
    parser.add_argument("--variant", default="drsf")
    parser.add_argument("--block", default="all", choices=["dfdr", "mdsf", "all"])
    parser.add_argument("--method", default="v2", choices=["v2", "v1"])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--first-trial", type=int, default=0, help="trial index to start from (resume)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    parser.add_argument("--val-frac", type=float, default=0.2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hparam_search.jsonl"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH")
    args = parser.parse_args(argv)
    cfg = load_config(ROOT / "configs" / f"mini_{args.task}.yaml", [f"variant={args.variant}", *args.overrides])
    train_set = build_train_set(cfg)
    n_train, _ = split_sources(len(train_set.twin_table), args.val_frac)
    names = {i + 1: name for i, name in enumerate(cfg.data.synth_domains)}
    val = validation_sets(train_set, n_train, names)
    keys = block_keys(args.variant, args.block)
    metric = "map50_voc07" if args.task == "det" else "miou"
    for trial in range(args.first_trial, args.first_trial + args.trials):
        hp = random_hparams(args.variant, args.task, seed=trial, keys=keys)
        if "method" in hp:
            hp["method"] = args.method
        t0 = time.perf_counter()
        model = run_trial(cfg, train_set, n_train, hp, args.steps, args.seed)
        values = {name: score(model, args.task, items) for name, items in val.items()}
        finite = [v for v in values.values() if math.isfinite(v)]
        values["mean"] = statistics.mean(finite) if finite else float("nan")
        base = {"task": args.task, "variant": args.variant, "block": args.block, "trial": trial, "seed": args.seed,
                "steps": args.steps, "hparams": json.dumps(hp, sort_keys=True), "metric": metric,
                "train_images": n_train, "val_images": len(val["source"]),
                "seconds": round(time.perf_counter() - t0, 2)}
        for name, value in values.items():
            append_jsonl(args.out, {**base, "domain": name, "value": value if math.isfinite(value) else None})
        print(f"trial {trial}: {metric} mean {values['mean']:.4f} ({', '.join(f'{k} {v:.3f}' for k, v in values.items())})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
