"""One GPU check: every variant trains on CUDA, at the paper's scale and on the embedded data.

Three parts, one JSON (``benchmarks/results/gpu_check.json``):

1. ``step``: ``benchmarks/gpu_step.py`` for every variant of both paper configs (random weights, the
   configs' autocast): s/iter (median and mean), peak GB, images/s;
2. ``train``: a real ``drsf train`` of every variant of both tasks on freshly built embedded data, from
   the shipped warm starts (``configs/demo_*.yaml``: 200 steps, then the full evaluation): seconds,
   s/iter, images/s, peak GB and the target-mean score of each run;
3. ``paper_loader``: the paper R-101 detector (``configs/paper_det_dwd_r101.yaml``, no ImageNet weights)
   through the real data loader on that data for 50 steps.

It needs only what an ML image has (torch, torchvision, numpy, pillow, opencv, pandas, matplotlib,
scipy, scikit-learn, tqdm, pyyaml; pycocotools for the detection scores) and the machine's own python;
nothing of the notebook stack. Usage::

    make gpu-check                                   # = python3 benchmarks/gpu_check.py
    python3 benchmarks/gpu_check.py --toy --out /tmp/toy.json   # a CPU rehearsal at toy sizes (the tests)

Without a CUDA device (and without ``--toy``) it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import gpu_step  # noqa: E402  (the step benchmark next to this file)

from drsf_kit.cli import main as drsf  # noqa: E402
from drsf_kit.models import VARIANTS  # noqa: E402
from drsf_kit.train.rundir import RunDir  # noqa: E402
from drsf_kit.utils.io import atomic_write_json  # noqa: E402

TASK_CONFIG = {"det": "configs/demo_det.yaml", "seg": "configs/demo_seg.yaml"}
PRIMARY = {"det": "map50_voc07", "seg": "miou"}
# eval_images: 100 per domain keeps the 12 real runs inside the check's 6 minutes (the demo scores all 200)
FULL = {"build": ["--n-train", "800", "--n-test", "200", "--n-target", "200"], "train_steps": 200,
        "paper_steps": 50, "step_steps": 10, "step_warmup": 3, "eval_images": 100, "workers": 8}
TOY = {"build": ["--n-train", "8", "--n-test", "4", "--n-target", "4", "--height", "90", "--width", "160"],
       "train_steps": 2, "paper_steps": 2, "step_steps": 1, "step_warmup": 1, "eval_images": 2, "workers": 0}


def _drsf(args: list[str], log: Path) -> float:
    """Run one ``drsf`` command in this process (its output appended to ``log``); returns seconds."""
    t0 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = drsf(args)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ drsf {' '.join(args)}\n{out.getvalue()}\n")
    if code != 0:
        tail = out.getvalue().strip().splitlines()[-3:]
        raise SystemExit(f"error: `drsf {' '.join(args)}` exited {code}: {' | '.join(tail)} (log: {log})")
    return time.perf_counter() - t0


def _run_summary(run_dir: Path, task: str) -> dict:
    """s/iter, images/s and peak memory from the training log; target-mean score from the results."""
    run = RunDir(run_dir)
    steps = [r for r in run.metric_rows() if r.get("event") is None and "sec_per_step" in r and r["step"] > 1]
    rows = [r for r in run.result_rows() if r.get("metric") == PRIMARY[task] and r.get("class") is None
            and r.get("split") != "val"]
    targets = [r["value"] for r in rows if r.get("domain") != "daytime_clear"]
    secs = [r["sec_per_step"] for r in steps]
    mem = [r["gpu_mem_gb"] for r in steps if r.get("gpu_mem_gb") is not None]
    ips = [r["images_per_s"] for r in steps if r.get("images_per_s")]
    return {"s_per_iter": round(statistics.median(secs), 4) if secs else None,
            "s_per_iter_mean": round(statistics.mean(secs), 4) if secs else None,
            "images_per_s": round(statistics.median(ips), 2) if ips else None,
            "peak_gb": round(max(mem), 3) if mem else None,
            f"target_mean_{PRIMARY[task]}": round(100 * statistics.mean(targets), 2) if targets else None}


def check(toy: bool, work: Path, device: str, skip_step: bool = False, variants: list[str] | None = None) -> dict:
    """Run the three parts; returns the record written to the JSON."""
    size = TOY if toy else FULL
    log = work / "gpu_check.log"
    data, synth = work / "mini-weather", work / "synth"
    record: dict = {"toy": toy, "step": [], "train": [], "paper_loader": None}
    variants = list(variants or VARIANTS)

    # 1. the paper recipes' step, random weights
    for config in gpu_step.CONFIGS if not skip_step else ():
        for variant in variants:
            row = gpu_step.measure(config, variant, torch.device(device), size["step_steps"], size["step_warmup"],
                                   toy, [])
            record["step"].append(row)
            print(f"step   {config:28s} {variant:18s} {row['s_per_iter']:.3f} s/iter (mean {row['s_per_iter_mean']:.3f})"
                  f"  peak {row['peak_gb']} GB", flush=True)

    # 2. real drsf train runs on freshly built embedded data, from the shipped warm starts
    t = 0.0 if (data / "daytime_clear").is_dir() else _drsf(["data", "make-mini", "--out", str(data), "--no-progress", *size["build"]], log)
    t += 0.0 if (synth / "procedural").is_dir() else _drsf(["synth", "--data", str(data), "--backend", "procedural", "--out", str(synth), "--no-progress"], log)
    record["data_seconds"] = round(t, 1)
    for task, config in TASK_CONFIG.items():
        for variant in variants:
            name = f"{task}-{variant}"
            overrides = [f"variant={variant}", f"device={device}", f"data.root={data}",
                         f"data.synth_root={synth / 'procedural'}", f"output_dir={work / 'runs'}", f"run_name={name}",
                         f"model.init_weights={ROOT / 'data' / 'warm_start' / f'mini_{task}_source_only.pt'}",
                         f"train.max_steps={size['train_steps']}", f"eval.max_images={size['eval_images']}",
                         "train.checkpoint_every=0", "train.log_every=1", "train.tensorboard=false",
                         f"data.num_workers={size['workers']}"]
            seconds = _drsf(["train", "--config", str(ROOT / config), *overrides], log)
            row = {"task": task, "variant": variant, "config": config, "steps": size["train_steps"],
                   "process_seconds": round(seconds, 1), **_run_summary(work / "runs" / name, task)}
            record["train"].append(row)
            print(f"train  {task} {variant:18s} {row['process_seconds']:7.1f} s  {row['s_per_iter']} s/iter  "
                  f"peak {row['peak_gb']} GB  target mean {row[f'target_mean_{PRIMARY[task]}']}", flush=True)

    # 3. the paper detector through the real loader
    paper = ["variant=drsf", f"device={device}", f"data.root={data}", f"data.synth_root={synth / 'procedural'}",
             "model.pretrained_backbone=null", f"output_dir={work / 'runs'}", "run_name=paper-det-drsf",
             f"train.max_steps={size['paper_steps']}", "eval.max_images=4", "train.checkpoint_every=0",
             "train.log_every=1", "train.tensorboard=false", "data.num_workers=4"]
    if toy:
        paper += gpu_step.TOY["det"] + ["data.num_workers=0", "train.amp=false"]
    seconds = _drsf(["train", "--config", str(ROOT / "configs/paper_det_dwd_r101.yaml"), *paper], log)
    record["paper_loader"] = {"config": "configs/paper_det_dwd_r101.yaml", "variant": "drsf",
                              "steps": size["paper_steps"], "process_seconds": round(seconds, 1),
                              **_run_summary(work / "runs" / "paper-det-drsf", "det")}
    print(f"paper  det drsf R-101 through the loader: {record['paper_loader']}", flush=True)
    return record


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy", action="store_true", help="CPU rehearsal at toy sizes (the tests run it)")
    ap.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), help="default: every variant")
    ap.add_argument("--skip-step", action="store_true", help="leave out part 1 (the paper configs' step)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = ap.parse_args(argv)
    if not args.toy and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); "
              "`python3 benchmarks/gpu_check.py --toy` rehearses it on the CPU", file=sys.stderr)
        raise SystemExit(1)
    device = "cpu" if args.toy else "cuda"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drsf-gpu-check-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        record = check(args.toy, work, device, args.skip_step, args.variants)
    cuda = torch.cuda.is_available() and not args.toy
    record = {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
              "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 1), **record}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record)
    print(json.dumps({"written": str(args.out), "seconds": record["seconds"]}))
    return record


if __name__ == "__main__":
    main()
