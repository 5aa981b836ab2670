"""Does DFDR's fast inference statistic change any prediction of a trained run?

At inference DFDR's channel score reads each channel's (mean, log std) with a two-pass variance
(``channel_statistics(two_pass=True)``), ten times cheaper on CPU than ``torch.var``, which training
keeps. The inference gate is a hard top-k split, so the two can differ only where two channels' scores
tie to float rounding. This script scores the first ``--images`` images of every eval domain of each
run twice, once per statistic, and counts the images whose outputs are not bit-identical
(segmentation: the logits; detection: boxes, scores and labels).

    python benchmarks/dfdr_eval_identity.py RUN_DIR [RUN_DIR ...] [--images 100] [--out FILE.json]

Runs without a DFDR block are refused. The JSON report lists, per run and domain, the images compared
and the images that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from drsf_kit.errors import ConfigError
from drsf_kit.train.data import source_dataset
from drsf_kit.train.evaluate import eval_split, load_run
from drsf_kit.utils.io import atomic_write_json


def _compare(task: str, fast, ref, threshold: float) -> dict:
    """Differences between two outputs of one image (summed by the caller)."""
    if task == "seg":
        differ = int((fast.argmax(dim=1) != ref.argmax(dim=1)).sum())
        return {"pixels": int(fast.argmax(dim=1).numel()), "pixels_differ": differ, "images_differ": int(differ > 0),
                "max_logit_diff": float((fast - ref).abs().max())}
    a, b = fast[0], ref[0]
    ka, kb = a["scores"] >= threshold, b["scores"] >= threshold
    same_set = int(ka.sum()) == int(kb.sum()) and torch.equal(a["labels"][ka], b["labels"][kb])
    out = {"images_differ": int(not same_set), "max_box_diff": 0.0, "max_score_diff": 0.0}
    if same_set and int(ka.sum()):
        out["max_box_diff"] = float((a["boxes"][ka] - b["boxes"][kb]).abs().max())
        out["max_score_diff"] = float((a["scores"][ka] - b["scores"][kb]).abs().max())
    return out


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = max(total.get(k, 0.0), v) if k.startswith("max_") else total.get(k, 0) + v


def compare_run(run_dir: Path, images: int) -> dict:
    """``{domain: {"images": n, "differ": k}}`` for one run."""
    model, cfg = load_run(run_dir)
    if getattr(model, "dfdr", None) is None or model.dfdr.posterior is None:
        raise ConfigError(f"{run_dir}: variant {cfg.variant!r} has no DFDR domain-posterior score to compare")
    out = {}
    for domain in cfg.eval_domains():
        dataset = source_dataset(cfg, domain, eval_split(cfg, domain, cfg.eval_protocol()))
        n = min(images, len(dataset))
        total = {"images": n}
        with torch.no_grad():
            for i in tqdm(range(n), desc=f"{run_dir.name} {domain}", leave=False):
                image = dataset[i][0]
                batch = [image] if cfg.task == "det" else image[None]
                model.dfdr.posterior.eval()  # inference: two-pass variance
                fast = model(batch)
                model.dfdr.posterior.train()  # training's statistic (the module has no dropout or norm)
                ref = model(batch)
                model.dfdr.posterior.eval()
                _add(total, _compare(cfg.task, fast, ref, cfg.eval.score_threshold))
        out[domain] = total
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="trained run folders with a DFDR block")
    ap.add_argument("--images", type=int, default=100, help="images per eval domain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"benchmark": "dfdr_inference_check", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": {}}
    try:
        for run in args.runs:
            report["runs"][run.name] = compare_run(run, args.images)
            print(run.name, json.dumps(report["runs"][run.name]), flush=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary: dict = {}
    for r in report["runs"].values():
        for d in r.values():
            _add(summary, d)
    report["summary"] = summary
    print("all runs:", json.dumps(summary))
    if args.out:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
