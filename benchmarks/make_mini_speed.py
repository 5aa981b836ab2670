"""Time a default mini-weather build (1000 source + 4 x 200 target images) and print JSON.

Goal: <= 90 s on 2 CPU cores. Usage:
    python benchmarks/make_mini_speed.py [--workers N] [--n-train 800] [--keep OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from drsf_kit.data.mini_weather import make_mini_weather


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Build once into a temporary folder (or ``--keep``), print seconds and images per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the builder's choice)")
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-target", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="build here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mini-weather-bench-"))
    try:
        start = time.perf_counter()
        cpu0 = _cpu_seconds()
        make_mini_weather(out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, n_target=args.n_target,
                          progress=False, overwrite=True, workers=args.workers)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        images = args.n_train + args.n_test + 4 * args.n_target
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({
        "benchmark": "make_mini_weather", "images": images, "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1), "goal_seconds": 90, "meets_goal": seconds <= 90,
        # CPU time of this process and its workers: on a busy machine, cpu_seconds / cpus estimates a quiet run
        "cpu_seconds": round(cpu, 2), "cpu_ms_per_image": round(1000 * cpu / images, 1),
        "workers": args.workers, "cpus": len(os.sched_getaffinity(0)), "load_avg_1min": round(os.getloadavg()[0], 2),
        "bytes": size, "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
