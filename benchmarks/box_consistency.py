"""Box consistency of the pseudo-domains per fidelity level: how many reused boxes a source-trained detector finds.

Loads a finished source_only run of the detection protocol (trained on source images only) and scores the
twins of the held-out source ``val`` images of every pseudo-domain at each level, plus the real ``val``
images themselves as the reference, with ``drsf_kit.synth.consistency.box_recall``. Writes
``benchmarks/results/box_consistency.json``.

Usage: ``python benchmarks/box_consistency.py --run runs/protocol_det/det-shared-source_only-s0 [--levels clean,ldm]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    """Score every level and write the JSON."""
    import torch

    from drsf_kit.data.paired import PairedSynthetic
    from drsf_kit.synth.consistency import RECALL_IOU, RECALL_SCORE, box_recall
    from drsf_kit.train.data import source_dataset
    from drsf_kit.train.evaluate import load_run
    from drsf_kit.utils.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished source_only detection run folder")
    ap.add_argument("--synth-out", default="data/synth-protocol", help="<synth-out>/<level>/procedural")
    ap.add_argument("--levels", default="clean,ldm")
    ap.add_argument("--split", default="val", help="source split whose twins are scored (default val)")
    ap.add_argument("--domains", default=None, help="comma list of twin domains (default: the run's synth_domains)")
    ap.add_argument("--score", type=float, default=None, help="confidence a detection needs (default RECALL_SCORE)")
    ap.add_argument("--out", default="box_consistency.json", help="file name under benchmarks/results/")
    ap.add_argument("--max-images", type=int, default=0, help="first N images per set (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.utils.data import Subset

    def head(ds):
        return Subset(ds, range(min(len(ds), args.max_images))) if args.max_images else ds

    model, cfg = load_run(args.run)
    source = cfg.data.source_domain
    t0 = time.perf_counter()
    score = RECALL_SCORE if args.score is None else args.score
    domains = args.domains.split(",") if args.domains else list(cfg.data.synth_domains)
    result = {"run": args.run, "step": int(getattr(model, "trained_steps", -1)), "max_images": args.max_images, "iou": RECALL_IOU, "score": score, "split": args.split,
              "reference": {source: box_recall(model, head(source_dataset(cfg, source, args.split)), score=score)}, "levels": {}}
    for level in [s for s in args.levels.split(",") if s]:
        root = Path(args.synth_out) / level / "procedural"
        per = {}
        for domain in domains:
            twins = PairedSynthetic(cfg.data.root, root, source, args.split, domains=[domain], task="det", progress=False)
            per[domain] = box_recall(model, head(twins), score=score)
        boxes = sum(v["boxes"] for v in per.values())
        per["all"] = {"boxes": boxes, "found": sum(v["found"] for v in per.values()),
                      "recall": sum(v["found"] for v in per.values()) / boxes}
        result["levels"][level] = per
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["command"] = "python benchmarks/box_consistency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(ROOT / "benchmarks" / "results" / args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
