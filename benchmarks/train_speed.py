"""Training speed of the mini profiles through the real engine code (sampler, collate, train_step).

Part 1 (always): median seconds per training step of every variant on mini-weather batches of
``train.batch_source`` = 2 source images + 2 twins (source_only: the 2 sources), wall and CPU time,
data-loading time per batch, and the process's peak memory. Goal: <= 0.4 s per detection step on 2 cores.
Part 2 (``--runs``): one full mini training run per (task, variant) with the mini configs, each in its own
process: wall time (goal <= 6 min) and peak resident memory.

Wall times need an otherwise idle machine: the JSON carries the load average before and after.
Usage: ``python benchmarks/train_speed.py [--tasks det seg] [--steps 20] [--runs] [--json]``.
Writes ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from drsf_kit.config import load_config
from drsf_kit.models import VARIANTS
from drsf_kit.data.twins import TwinCollate
from drsf_kit.train.data import build_train_set
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.train.engine import build_model_for, build_optimizer, build_scheduler, train_step
from drsf_kit.utils.io import atomic_write_json
from drsf_kit.utils.runtime import default_num_threads, seed_everything

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def step_times(task: str, variant: str, steps: int, overrides: list[str]) -> dict:
    """Median wall / CPU seconds of ``steps`` training steps (after 2 warm-up steps) of one variant."""
    cfg = load_config(ROOT / "configs" / f"mini_{task}.yaml", [f"variant={variant}", *overrides])
    seed_everything(cfg.seed)
    train_set = build_train_set(cfg)
    sampler = TwinBatchSampler(train_set.twin_table, cfg.train.batch_source, cfg.seed,
                               use_twins=cfg.spec.use_synth)
    collate = TwinCollate(task)
    model = build_model_for(cfg)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    wall, cpu, data = [], [], []
    for b in range(steps + 2):
        t0 = time.perf_counter()
        batch = collate([train_set[it] for it in sampler.batch(b)])
        data.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(model, batch, optimizer, torch.device("cpu"), step=b + 1, progress=b / (steps + 2),
                   scheduler=scheduler, generator=generator, grad_clip=cfg.train.grad_clip)
        if b >= 2:  # the first steps allocate buffers
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"images_per_step": len(batch), "step_s": statistics.median(wall), "step_cpu_s": statistics.median(cpu),
            "data_s": statistics.median(data[2:]), "steps": steps}


def full_run(task: str, variant: str, out: Path, overrides: list[str]) -> dict:
    """One `drsf train` run in a child process: wall seconds and the child's peak RSS."""
    cmd = [sys.executable, "-m", "drsf_kit", "train", "--config", str(ROOT / "configs" / f"mini_{task}.yaml"),
           f"variant={variant}", f"output_dir={out}", "train.tensorboard=false", *overrides, "--no-progress",
           "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit_code": code,
            "error": err.strip().splitlines()[-1] if code and err.strip() else None}


def main() -> None:
    """Run the benchmark and print/write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=["det", "seg"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=default_num_threads())
    parser.add_argument("--runs", action="store_true", help="also time one full mini training run per variant")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"benchmark": "train_speed", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "device": "cpu",
              "cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
              "loadavg_before": os.getloadavg()[0], "steps": {}, "runs": {}}
    for task in args.tasks:
        for variant in args.variants:
            report["steps"][f"{task}/{variant}"] = step_times(task, variant, args.steps, args.overrides)
            if not args.json:
                print(task, variant, report["steps"][f"{task}/{variant}"], flush=True)
    report["peak_rss_mb_step_bench"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            for task in args.tasks:
                for variant in args.variants:
                    report["runs"][f"{task}/{variant}"] = full_run(task, variant, Path(tmp), args.overrides)
                    if not args.json:
                        print(task, variant, report["runs"][f"{task}/{variant}"], flush=True)
    report["loadavg_after"] = os.getloadavg()[0]
    det = report["steps"].get("det/drsf")
    report["goals"] = {
        "det_step_s<=0.4": None if det is None else det["step_s"] <= 0.4,
        # CPU time: the step time on an idle machine (exactly so with --threads 1), whatever else runs
        "det_step_cpu_s<=0.4": None if det is None or args.threads != 1 else det["step_cpu_s"] <= 0.4,
        "run_wall_s<=360": None if not report["runs"] else all(r["wall_s"] <= 360 for r in report["runs"].values()),
    }
    atomic_write_json(RESULTS / "train_speed.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
