"""Step time and parameter overhead of the mini profiles (180x320, batch 4 = 2 source + 2 twins).

Prints one JSON object. Goal: <= 0.4 s per detection training step on 2 CPU cores, and DRSF's extra
trainable parameters <= 2% of source_only's. Wall times need an otherwise idle machine; the report
carries the load average and the CPU time per step (``--threads 1`` makes the CPU time load-robust).
Usage: ``python benchmarks/bench_models.py [--steps 10] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from tqdm import tqdm

from drsf_kit.models import VARIANTS, build_model
from drsf_kit.utils.runtime import default_num_threads


def _batch(task: str, h: int, w: int, generator: torch.Generator):
    """Two source images and their two twins (domains 1 and 2) with shared labels."""
    src = torch.rand(2, 3, h, w, generator=generator)
    images = torch.cat([src, (src * 0.5 + 0.2).clamp(0, 1)])
    if task == "det":
        boxes = torch.tensor([[20.0, 40.0, 60.0, 90.0], [150.0, 60.0, 260.0, 150.0], [5.0, 5.0, 15.0, 20.0]])
        target = {"boxes": boxes, "labels": torch.tensor([3, 1, 5])}
        return list(images), [dict(target) for _ in range(4)]
    mask = torch.randint(0, 19, (2, h, w), generator=generator)
    return images, torch.cat([mask, mask])


def bench(task: str, variant: str, steps: int, h: int, w: int) -> dict:
    """Median training-step and inference time of one (task, variant) on the mini profile."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(task, "mini", variant, num_domains=5)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = _batch(task, h, w, gen)
    domains = torch.tensor([0, 0, 1, 2])
    pairs = torch.tensor([[0, 2], [1, 3]]) if VARIANTS[variant].use_synth else torch.zeros(0, 2, dtype=torch.long)
    times, cpu = [], []
    model.train()
    for i in tqdm(range(steps + 2), desc=f"{task}/{variant}", leave=False):
        t0, c0 = time.perf_counter(), time.process_time()
        losses = model(images, targets, domains=domains, pairs=pairs, progress=i / (steps + 2), generator=gen)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        if i >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(4):
            t0 = time.perf_counter()
            model(images)
            if i >= 1:
                infer.append(time.perf_counter() - t0)
    return {
        "train_step_s": round(statistics.median(times), 4),
        "train_step_cpu_s": round(statistics.median(cpu), 4),
        "infer_batch4_s": round(statistics.median(infer), 4),
        "trainable_params": model.trainable_parameter_count(),
    }


def main(argv=None) -> None:
    """Benchmark every variant of both mini profiles and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    # 1 thread gives a load-robust CPU time: with 2 threads on a busy machine OpenMP spin-waits inflate it.
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or default_num_threads())
    report = {
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "size": [args.height, args.width],
        "batch": 4,
        "results": {},
    }
    for task in ("det", "seg"):
        rows = {v: bench(task, v, args.steps, args.height, args.width) for v in args.variants}
        base = rows.get("source_only", {}).get("trainable_params")
        for row in rows.values():
            if base:
                row["extra_param_fraction"] = round(row["trainable_params"] / base - 1.0, 5)
        report["results"][task] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
