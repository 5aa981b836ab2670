"""Speed of the gap analysis: features + t-SNE of 2,000 images; prints one JSON object.

Goal: features of 2,000 images at 180x320 from the mini profile plus their t-SNE in <= 60 s on 2 CPU
cores. The images are rendered in memory (sky, road, a few boxes, then a weather style per domain:
clear, fog, dusk, night), so the script runs on a bare checkout. Also reported: the gap table over the
four styles and re-opening the features from the disk cache.

Usage:
    python benchmarks/gap_speed.py [--images 2000] [--stage layer4] [--batch-size 64] [--task det]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from drsf_kit.analysis.embedding import tsne_embed
from drsf_kit.analysis.features import default_backbone, default_stage, extract_features
from drsf_kit.analysis.gap import gap_table
from drsf_kit.utils.runtime import default_num_threads

GOAL_SECONDS = 60.0
STYLES = ("daytime_clear", "daytime_foggy", "dusk_rainy", "night_sunny")


def render_images(n: int, height: int = 180, width: int = 320, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` uint8 street-like images ``[n, 3, H, W]`` and their style names (cycling through STYLES)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, height, width, 3), np.uint8)
    styles = []
    for i in range(n):
        img = np.empty((height, width, 3), np.float32)
        horizon = int(rng.integers(height // 3, height // 2))
        img[:horizon] = rng.uniform(120, 230, 3)
        img[horizon:] = rng.uniform(40, 110, 3)
        for _ in range(int(rng.integers(2, 7))):
            h, w = int(rng.integers(12, 50)), int(rng.integers(16, 80))
            y, x = int(rng.integers(horizon - 10, height - h)), int(rng.integers(0, width - w))
            img[y:y + h, x:x + w] = rng.uniform(0, 255, 3)
        style = STYLES[i % len(STYLES)]
        if style == "daytime_foggy":
            img = 0.4 * img + 0.6 * 200.0
        elif style == "dusk_rainy":
            img = img * np.array([0.8, 0.55, 0.45], np.float32)
            img[rng.random((height, width)) < 0.01] = 220.0  # rain streak seeds
        elif style == "night_sunny":
            img = img * 0.25 + np.array([0, 0, 20], np.float32)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        styles.append(style)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), styles


def main() -> None:
    """Run the benchmark and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--task", choices=("det", "seg"), default="det")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=default_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    images, styles = render_images(args.images)
    render_s = time.perf_counter() - t0
    model = default_backbone(args.task)
    stage = args.stage or default_stage(model)

    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    feats = extract_features(model, images, stage, batch_size=args.batch_size, progress=False)
    features_s, features_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    emb = tsne_embed(feats.pooled, seed=0)
    tsne_s, tsne_cpu = time.perf_counter() - t0, time.process_time() - c0

    groups = np.asarray(styles)
    by_style = {s: feats.pooled[groups == s] for s in STYLES}
    t0 = time.perf_counter()
    # A stand-in for a real table: the foggy style plays the pseudo-domain, the night style the target.
    table = gap_table({"synth:daytime_foggy": by_style["daytime_foggy"], "synth:dusk_rainy": by_style["dusk_rainy"],
                       "night_sunny": by_style["night_sunny"], "daytime_clear": by_style["daytime_clear"]},
                      ["synth:daytime_foggy", "synth:dusk_rainy"], ["night_sunny"], "daytime_clear", progress=False)
    gap_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as cache:
        extract_features(model, images[:256], stage, batch_size=args.batch_size, cache_dir=cache, progress=False)
        t0 = time.perf_counter()
        again = extract_features(model, images[:256], stage, batch_size=args.batch_size, cache_dir=cache,
                                 progress=False)
        cache_s = time.perf_counter() - t0
    total = features_s + tsne_s
    print(json.dumps({
        "benchmark": "gap_speed",
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__,
                    "cores": os.cpu_count(), "load_avg_1min_before": round(load_before, 2),
                    "load_avg_1min_after": round(os.getloadavg()[0], 2)},
        "images": args.images, "size": [180, 320], "task": args.task, "profile": "mini", "stage": stage,
        "feature_dim": int(feats.pooled.shape[1]),
        "seconds": {"render": round(render_s, 2), "features": round(features_s, 2), "tsne": round(tsne_s, 2),
                    "features_plus_tsne": round(total, 2), "gap_table_4_pairs": round(gap_s, 2),
                    "cache_reopen_256": round(cache_s, 3)},
        # CPU time of this process (all threads): close to the wall time of an otherwise idle machine
        # times the threads used; the wall times above grow when other jobs share the cores.
        "cpu_seconds": {"features": round(features_cpu, 2), "tsne": round(tsne_cpu, 2)},
        "images_per_s": round(args.images / features_s, 1),
        "cache_hit": bool(again.from_cache),
        "tsne_shape": list(emb.shape),
        "closest_to_night_sunny": str(table["closest_pseudo_domain"].iloc[0]),
        "goal_seconds": GOAL_SECONDS, "goal_met": bool(total <= GOAL_SECONDS),
    }, indent=2))


if __name__ == "__main__":
    main()
