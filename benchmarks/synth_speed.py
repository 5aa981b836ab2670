"""Generation speed of the synth backends; prints one JSON object.

Goal: the procedural backend makes >= 50 images/s at 320x180 on 2 CPU cores. Also measured: a tiny
random img2img pipeline on the CPU (the cost of the diffusion code path itself, not of a real model),
and, with ``--model PATH`` (e.g. ``--device cuda``), a real img2img model at 512x512 (fp16 on cuda).

Usage:
    python benchmarks/synth_speed.py [--data data/mini-weather] [--images 300]
    python benchmarks/synth_speed.py --device cuda --model weights/stable-diffusion-v1-5 [--steps 50]

Sources: ``--data ROOT`` (DWD layout; defaults to data/mini-weather when it exists), else smooth
random images, so the script runs on a bare checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from drsf_kit.errors import DataError
from drsf_kit.synth import SourceItem, SynthConfig, build_generator, item_seed, run_synth
from drsf_kit.synth.base import DEFAULT_SYNTH_DOMAINS
from drsf_kit.utils.runtime import default_num_threads

ROOT = Path(__file__).resolve().parents[1]
GOAL_IMAGES_PER_S = 50.0


def noise_images(n: int, size=(320, 180), seed: int = 0) -> list[SourceItem]:
    """Smooth random colour images (low-resolution noise, upsampled) with one dummy box each."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        small = rng.integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.BICUBIC)
        items.append(SourceItem(image=image, boxes=np.array([[40, 60, 120, 150]], np.float32),
                                labels=np.array([3]), mask=None, source_id=f"noise{i:05d}"))
    return items


def dataset_images(root: Path, n: int) -> list[SourceItem]:
    """The first ``n`` source-train images of a DWD-layout dataset."""
    from drsf_kit.data.dwd import DWDDetection
    from drsf_kit.synth.runner import load_source_item

    ds = DWDDetection(root, "daytime_clear", "train", progress=False)
    return [load_source_item(ds, s, with_mask=False) for s in sorted(ds.ids)[:n]]


def bench_procedural(items: list[SourceItem]) -> dict:
    """images/s of ProceduralGenerator.generate per domain and over all four, by the wall clock and
    per CPU-second of this process (the latter does not drop when other jobs share the cores)."""
    gen = build_generator(SynthConfig(data="unused"))
    per_domain = {}
    total_images, total_time, total_cpu = 0, 0.0, 0.0
    for domain in DEFAULT_SYNTH_DOMAINS:
        seeds = [item_seed(0, it.source_id, domain, 0) for it in items]
        t0, c0 = time.perf_counter(), time.process_time()
        for k in tqdm(range(0, len(items), 16), desc=f"procedural {domain}", leave=False, disable=None):
            gen.generate(items[k:k + 16], domain, seeds[k:k + 16])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        per_domain[domain] = round(len(items) / dt, 1)
        total_images, total_time, total_cpu = total_images + len(items), total_time + dt, total_cpu + dc
    return {"images_per_s": round(total_images / total_time, 1), "per_domain_images_per_s": per_domain,
            "images_per_cpu_s": round(total_images / total_cpu, 1)}


def bench_end_to_end(data: Path, n: int) -> dict:
    """images/s of a whole `drsf synth` run (decode, generate, score, JPEG write, manifest)."""
    with tempfile.TemporaryDirectory() as out:
        summary = run_synth(SynthConfig(data=str(data), out=out, limit=n, progress=False))
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_synth(SynthConfig(data=str(data), out=out, limit=n, progress=False, overwrite=True))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"images": summary["generated"], "images_per_s": round(summary["generated"] / dt, 1),
            "images_per_cpu_s": round(summary["generated"] / dc, 1)}


def _tiny_builders():
    # the test suite's builders of tiny random pipelines, loaded from their file (tests is no package)
    spec = importlib.util.spec_from_file_location("tiny_diffusion", ROOT / "tests" / "tiny_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_img2img(model: str, items: list[SourceItem], device: str, steps: int, batch: int, size: int,
                  repeats: int) -> dict:
    """images/s of the img2img backend (after one warm-up batch)."""
    cfg = SynthConfig(data="unused", backend="img2img", model=model, device=device, steps=steps,
                      batch_size=batch, size=size, strength=0.6)
    gen = build_generator(cfg)
    batch_items = items[:batch]
    seeds = list(range(batch))
    gen.generate(batch_items, "daytime_foggy", seeds)  # warm-up: kernel selection, allocations
    if gen.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for r in range(repeats):
        out = gen.generate(batch_items, "daytime_foggy", [s + r for s in seeds])
    if gen.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": str(gen.device), "dtype": str(gen.dtype).replace("torch.", ""), "steps": steps,
            "strength": 0.6, "batch": batch, "size": out[0].size, "images_per_s": round(batch * repeats / dt, 3)}


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON object."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never reach the network
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="DWD-layout root (default: data/mini-weather if present)")
    p.add_argument("--images", type=int, default=300, help="source images for the procedural measurement")
    p.add_argument("--model", default=None, help="real img2img model folder (measured at --model-size)")
    p.add_argument("--device", default="auto", help="device of the real-model measurement")
    p.add_argument("--steps", type=int, default=50, help="steps of the real-model measurement")
    p.add_argument("--batch", type=int, default=4, help="batch of the img2img measurements")
    p.add_argument("--model-size", type=int, default=512, help="longer side for the real model")
    p.add_argument("--skip-tiny", action="store_true", help="skip the tiny-pipeline measurement")
    args = p.parse_args(argv)
    threads = default_num_threads()
    import torch

    torch.set_num_threads(threads)
    data = Path(args.data) if args.data else ROOT / "data" / "mini-weather"
    use_data = args.data is not None or (data / "daytime_clear").is_dir()
    try:
        items = dataset_images(data, args.images) if use_data else noise_images(args.images)
    except DataError:
        if args.data:
            raise
        use_data, items = False, noise_images(args.images)  # a default folder still being built
    items = [SourceItem(it.image.resize((320, 180), Image.BILINEAR) if it.image.size != (320, 180) else it.image,
                        it.boxes, it.labels, None, it.source_id) for it in items]
    proc = bench_procedural(items)
    result = {
        # the load average says whether other work shared the cores during the measurement
        "machine": {"cpu_threads": threads, "load_average_1min": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "procedural": {"source": str(data) if use_data else "smooth noise images", "size": [320, 180],
                       "images": len(items), **proc, "goal_images_per_s": GOAL_IMAGES_PER_S,
                       "meets_goal": proc["images_per_s"] >= GOAL_IMAGES_PER_S},
    }
    if use_data:
        result["procedural"]["end_to_end"] = bench_end_to_end(data, min(args.images, 100))
    if not args.skip_tiny:
        tiny = _tiny_builders()
        with tempfile.TemporaryDirectory() as folder:
            model = tiny.build_tiny_sd(Path(folder) / "sd")
            result["img2img_tiny_cpu"] = bench_img2img(str(model), items, "cpu", steps=2, batch=args.batch,
                                                       size=64, repeats=5)
    if args.model:
        result["img2img_model"] = {"model": args.model, **bench_img2img(
            args.model, items, args.device, args.steps, args.batch, args.model_size, repeats=3)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
