"""Where a mini model's training forward spends its arithmetic, and what that predicts for MDSF designs.

Counts the multiply-adds of one training forward (one 180 x 320 image with two boxes / a full mask) of
the source_only mini detector and segmenter per body stage and for everything after the body (FPN,
RPN and box head; the segmentation decoder), with ``torch.utils.flop_counter``. Backward costs about
twice the forward for every row alike, so ratios of forward FLOPs are ratios of step arithmetic.

From those fractions it predicts the training-step arithmetic of MDSF designs relative to naive_synth
(one twin per source: 2 rows per source image), per source image:

- ``naive_synth_2twins``: the data-matched baseline, 3 full rows;
- ``v2``: MDSF v2 as built (1 source + 2 twins as full rows; with probability ``p_mix`` a fused row
  through the stages after ``fuse_stage`` and the head, and with ``fuse_head`` another ``p_mix``
  head-only fused row);
- ``shallow``: the unbuilt design of docs/method.md (the second pseudo-domain's twin runs only the
  stages up to ``fuse_stage`` and only when its source is fused, with probability ``p_mix``; it reaches
  the loss through the fused row). At ``p_mix`` 1 every source image uses twins of two pseudo-domains
  and the arithmetic is 3 rows per source whatever ``fuse_stage`` is (source, first twin, and the
  second twin's shallow part plus the fused row's deep part): 1.5x naive_synth before any block cost,
  the floor of any design in which every source trains with two pseudo-domains and fused samples are
  added to the batch rather than replacing a twin.

``with_block_cost`` multiplies by the per-row cost of the blocks measured by ``benchmarks/overhead.py
--naive-twins 2`` (``train_step_ratio_per_row`` in ``benchmarks/results/overhead_v2_matched.json``),
an estimate of the wall-time ratio, not a measurement; ``v2`` next to its measured ratio tells how far
the estimate is off. Arithmetic only: no timing, so it runs anywhere in seconds.

Usage: ``python benchmarks/stage_flops.py [--out benchmarks/results/stage_flops.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from drsf_kit.models import build_model
from drsf_kit.utils.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SIZE = (180, 320)  # the mini-weather image size (make_mini_weather's default), the detector's mini resize


def stage_fractions(task: str) -> dict[str, float]:
    """Fraction of one training forward's FLOPs per body stage, plus ``after_body`` (FPN and heads)."""
    torch.manual_seed(0)
    model = build_model(task, "mini", "source_only", num_domains=4)
    model.train()
    h, w = SIZE
    if task == "det":
        images = [torch.rand(3, h, w)]
        targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [100.0, 50.0, 150.0, 120.0]]),
                    "labels": torch.tensor([1, 2])}]
    else:
        images = torch.rand(1, 3, h, w)
        targets = torch.randint(0, 19, (1, h, w))
    with FlopCounterMode(display=False, depth=None) as counter:
        model(images, targets)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    total = counts[root]
    stages = {name: counts.get(f"{root}.body.stages.{name}", 0) for name in model.body.stage_names()}
    out = {name: flops / total for name, flops in stages.items()}
    out["after_body"] = 1.0 - sum(out.values())
    out["gflops_per_row"] = total / 1e9
    return out


def predicted_rows(frac: dict[str, float], design: str, p_mix: float = 0.5, fuse_stage: str = "layer1",
                   fuse_head: bool = True) -> float:
    """Forward arithmetic per source image, in full rows (a naive_synth source image costs 2)."""
    stages = [k for k in frac if k not in ("after_body", "gflops_per_row")]
    upto = stages.index(fuse_stage) + 1 if fuse_stage != "none" else 0
    shallow = sum(frac[s] for s in stages[:upto])  # stem .. fuse_stage
    deep = 1.0 - shallow  # the stages after fuse_stage and the head
    head = frac["after_body"]
    if design == "naive_synth":
        return 2.0
    if design == "naive_synth_2twins":
        return 3.0
    fused = p_mix * (deep if fuse_stage != "none" else 0.0) + (p_mix * head if fuse_head else 0.0)
    if design == "v2":
        return 3.0 + fused
    if design == "shallow":
        return 2.0 + p_mix * shallow + fused
    raise ValueError(design)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage_flops.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    def committed(name: str) -> dict:
        path = ROOT / "benchmarks" / "results" / name
        return json.loads(path.read_text()) if path.is_file() else {}

    measured, measured_v2 = committed("overhead_v2_matched.json"), committed("overhead_v2.json")
    doc = {"benchmark": "stage_flops", "command": "python benchmarks/stage_flops.py", "image_size": list(SIZE),
           "torch": torch.__version__, "tasks": {}}
    lines = ["# Training-forward arithmetic per stage, and what it predicts for MDSF designs", "",
             f"`{doc['command']}`; one {SIZE[0]} x {SIZE[1]} image, mini profiles, FLOPs of convolutions and "
             "matrix products (torch.utils.flop_counter). Ratios are step arithmetic relative to naive_synth "
             "(one twin per source); `x block cost` multiplies by the measured per-row cost of the blocks "
             "(overhead_v2_matched.json), an estimate, not a timing.", ""]
    designs = [("naive_synth_2twins", {}), ("v2", {}),
               ("shallow", {"p_mix": 1.0, "fuse_head": False}),  # every source uses its second twin: the floor
               ("shallow", {"p_mix": 0.5}), ("shallow", {"p_mix": 0.25}),
               ("shallow", {"p_mix": 0.25, "fuse_head": False}),
               ("shallow", {"p_mix": 0.25, "fuse_stage": "layer2", "fuse_head": False})]
    for task in ("det", "seg"):
        frac = stage_fractions(task)
        block = (measured.get(task) or {}).get("train_step_ratio_per_row")
        rows = []
        for design, kw in designs:
            ratio = predicted_rows(frac, design, **kw) / 2.0
            baseline = design == "naive_synth_2twins"
            settings = {"p_mix": None, "fuse_stage": None, "fuse_head": None} if baseline else {
                "p_mix": 0.5, "fuse_stage": "layer1", "fuse_head": True, **kw}
            rows.append({"design": design, **settings, "arithmetic_ratio": round(ratio, 3),
                         "with_block_cost": round(ratio * block, 3) if block and not baseline else None,
                         "measured": (measured_v2.get(task) or {}).get("train_step_ratio") if design == "v2" else None})
        doc["tasks"][task] = {"fractions": {k: round(v, 4) for k, v in frac.items()}, "block_cost_per_row": block,
                              "designs": rows}
        lines += [f"## {task}", "", "| stage | share of a training forward |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in frac.items() if k != "gflops_per_row"]
        lines += ["", f"{frac['gflops_per_row']:.2f} GFLOP per row (forward); per-row block cost {block} "
                  "(overhead_v2_matched.json); `measured`: the v2 step ratio of overhead_v2.json.", "",
                  "| design | p_mix | fuse_stage | fuse_head | arithmetic vs naive_synth | x block cost | measured |",
                  "|---|---|---|---|---|---|---|"]

        def cell(v):
            return "-" if v is None else str(v)

        for r in rows:
            lines.append(f"| {r['design']} | {cell(r['p_mix'])} | {cell(r['fuse_stage'])} | {cell(r['fuse_head'])} | "
                         f"{r['arithmetic_ratio']:.3f} | {cell(r['with_block_cost'])} | {cell(r['measured'])} |")
        lines.append("")
    out = Path(args.out)
    atomic_write_json(out, doc)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
