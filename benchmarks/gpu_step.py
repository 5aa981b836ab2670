"""Seconds per training step and peak GPU memory of the paper recipes, with random weights.

For each paper config (``configs/paper_*.yaml``) and variant, one model with random weights trains
through the engine's own ``train_step`` (autocast dtype, GradScaler, accumulation and throughput
switches as the config sets them) on synthetic batches of the recipe's size: ``train.batch_source``
source images plus one twin each for the variants that use twins, at the DWD frame size (1280x720,
resized by the detector to ``model.min_size``) or at the segmentation crop (``train.crop_size``).
No data set or weights file is needed. The authors' public figure for their detection recipe is
0.82 s/iter and 11.5 GB on one RTX 3090.

Usage (one command on a GPU machine)::

    python benchmarks/gpu_step.py                      # both paper configs, every variant
    python benchmarks/gpu_step.py --variants source_only drsf --set train.channels_last=true
    python benchmarks/gpu_step.py --toy --out /tmp/toy.json   # CPU, mini profiles, tiny images (tests)

Writes ``benchmarks/results/gpu_step.json`` (``--out`` to change). ``peak_gb`` is
``torch.cuda.max_memory_allocated`` over the timed steps (None on the CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from drsf_kit.config import load_config
from drsf_kit.models import VARIANTS
from drsf_kit.data.twins import TwinBatch
from drsf_kit.train.engine import build_model_for, build_optimizer, train_step
from drsf_kit.train.precision import describe, grad_scaler, resolve_amp_dtype
from drsf_kit.train.throughput import configure_backends, maybe_compile, prepare_model
from drsf_kit.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("paper_det_dwd_r101.yaml", "paper_seg_gtav_r101.yaml")
DWD_HW = (720, 1280)  # DWD frames; the detector resizes them to min_size x max_size itself
TOY = {"det": ["model.profile=mini", "model.min_size=90", "model.max_size=160"], "seg": ["model.profile=mini"]}
TOY_HW = {"det": (90, 160), "seg": (64, 96)}


def synthetic_batch(task: str, sources: int, twins: bool, hw: tuple[int, int], num_domains: int,
                    generator: torch.Generator) -> TwinBatch:
    """``sources`` random images (+ one twin each) of size ``hw`` with random boxes or masks."""
    n = sources * (2 if twins else 1)
    h, w = hw
    images = torch.rand(n, 3, h, w, generator=generator)
    domains = torch.tensor([0] * sources + [1 + i % max(1, num_domains) for i in range(n - sources)])
    pairs = torch.tensor([[i, sources + i] for i in range(n - sources)], dtype=torch.long).reshape(-1, 2)
    ids = [f"synthetic-{i}" for i in range(sources)]
    if task == "seg":
        masks = torch.randint(0, 19, (n, h, w), generator=generator)
        return TwinBatch(images, masks, domains, pairs, ids)
    targets = []
    for _ in range(n):  # a few boxes of street-object sizes
        k = 6
        xy = torch.rand(k, 2, generator=generator) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(k, 2, generator=generator) * torch.tensor([w * 0.15, h * 0.15])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 8, (k,), generator=generator)})
    return TwinBatch(list(images.unbind(0)), targets, domains, pairs, ids)


def measure(config: str, variant: str, device: torch.device, steps: int, warmup: int, toy: bool,
            overrides: list[str]) -> dict:
    """s/iter (median over ``steps`` after ``warmup``) and peak memory of one config and variant."""
    task = "det" if "_det_" in config else "seg"
    extra = TOY[task] + ["train.crop_size=[]"] if toy else []
    cfg = load_config(ROOT / "configs" / config, [f"variant={variant}", "model.pretrained_backbone=null",
                                                  *extra, *overrides])
    torch.manual_seed(0)
    model = build_model_for(cfg, load_pretrained=False).to(device)
    configure_backends(cfg.train, device)
    prepare_model(model, cfg.train, device)
    trained = maybe_compile(model, cfg.train, device)
    optimizer = build_optimizer(model, cfg.train)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, cfg.train.amp_dtype, device)
    scaler = grad_scaler(device, amp_dtype)
    hw = TOY_HW[task] if toy else (tuple(cfg.train.crop_size) if task == "seg" and cfg.train.crop_size else DWD_HW)
    g = torch.Generator().manual_seed(0)
    twins = cfg.spec.use_synth
    batch = synthetic_batch(task, cfg.train.batch_source, twins, hw, len(cfg.data.synth_domains), g)
    if device.type == "cuda":
        batch = batch.pin_memory()
    model.train()
    times = []
    for i in range(warmup + steps):
        if i == warmup and device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        train_step(trained, batch, optimizer, device, step=i + 1, progress=i / (warmup + steps),
                   scaler=scaler, generator=torch.Generator().manual_seed(i), grad_clip=cfg.train.grad_clip,
                   amp=cfg.train.amp, amp_dtype=cfg.train.amp_dtype, accumulate=cfg.train.accumulate)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
    del model, trained, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"config": config, "variant": variant, "task": task, "profile": cfg.model.profile,
            "batch_source": cfg.train.batch_source, "images_per_step": len(batch), "image_hw": list(hw),
            "min_size": cfg.model.min_size if task == "det" else None, "accumulate": cfg.train.accumulate,
            "amp_dtype": describe(amp_dtype), "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
            "steps": steps, "s_per_iter": round(statistics.median(times), 4), "s_per_iter_mean": round(statistics.mean(times), 4),
            "peak_gb": peak}


def main(argv: list[str] | None = None) -> dict:
    """Measure, print one line per (config, variant), write the JSON; returns the written record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --toy 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --toy 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda[:N]")
    parser.add_argument("--toy", action="store_true", help="mini profiles at tiny sizes (a CPU smoke test)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. train.channels_last=true (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_step.json"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    steps = args.steps if args.steps is not None else (2 if args.toy else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.toy else 5)
    rows = []
    for config in args.configs:
        for variant in args.variants:
            row = measure(config, variant, device, steps, warmup, args.toy, args.overrides)
            rows.append(row)
            mem = f"{row['peak_gb']:.2f} GB" if row["peak_gb"] is not None else "n/a (cpu)"
            print(f"{config:28s} {variant:12s} {row['amp_dtype']}  {row['s_per_iter']:.3f} s/iter  peak {mem}",
                  flush=True)
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
              "torch": torch.__version__, "toy": args.toy, "overrides": args.overrides,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "reference": {"authors_det_3090": {"s_per_iter": 0.82, "peak_gb": 11.5}},
              "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record)
    print(json.dumps({"written": str(args.out)}))
    return record


if __name__ == "__main__":
    main()
