"""The DRSF v3 design arms on training-domain validation only: the table the v3 choices were made on.

Reads, for every run of a design-arms protocol config (``configs/protocol/<task>_v3_arms.yaml``), its
training-domain validation rows (source ``val`` images and their twins in every pseudo-domain) and the
discriminator health record of its training log; never a target row. Prints and writes a Markdown
table: per arm, the validation score per seed, its mean, and the paired difference with the data-matched
baseline (mean, 95 % t interval, exact sign-flip p-value where there are seeds enough for one).

Usage::

    python benchmarks/v3_arms.py --task det [--config configs/protocol/det_v3_arms.yaml] [--level ldm_gap]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from drsf_kit.evaluation.paired import sign_flip_p
from drsf_kit.train.pretrain import weights_path
from drsf_kit.train.rundir import RunDir
from drsf_kit.train.selection import validation_score
from drsf_kit.workflows.protocol import jobs_of, load_protocol, pretrain_config, run_config

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "mdsf_twins_only"


def paired(diffs: list[float]) -> str:
    """``mean [lo, hi]`` (95 % t) and the exact two-sided sign-flip p-value of paired differences."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return f"{d.mean():+.1f} (1 seed)" if d.size else "-"
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    p = sign_flip_p(d)
    return f"{d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}], sign-flip p = {p:.3f} (n = {d.size})"


def health(run: RunDir) -> str:
    """The discriminator's end-of-run state from the training log ('-' without an adversary)."""
    rows = [r for r in run.metric_rows() if r.get("event") == "health"]
    return rows[-1].get("state", "at prior" if rows[-1].get("at_prior") else "above prior") if rows else "-"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["det", "seg"], required=True)
    ap.add_argument("--config", default=None)
    ap.add_argument("--level", default="ldm_gap")
    ap.add_argument("--out", default=None, help="Markdown file (default benchmarks/results/v3_arms/validation_<task>.md)")
    args = ap.parse_args(argv)
    config = args.config or str(ROOT / "configs" / "protocol" / f"{args.task}_v3_arms.yaml")
    proto, run = load_protocol(args.task, config)
    weights = weights_path(pretrain_config(args.task, proto, run))
    scores: dict[str, dict[int, float]] = {}
    states: dict[str, list[str]] = {}
    for job in jobs_of(proto, None, [args.level], list(proto["seeds"])):
        rd = RunDir(run_config(args.task, proto, run, job, weights).run_dir)
        path = rd.validation_path(args.level)
        if not path.is_file():
            continue
        scores.setdefault(job["variant"], {})[job["seed"]] = 100 * validation_score(json.loads(path.read_text(encoding="utf-8"))["rows"], args.task)
        states.setdefault(job["variant"], []).append(health(rd))
    metric = "mAP50 (VOC07)" if args.task == "det" else "mIoU"
    lines = [f"# DRSF v3 design arms, {args.task}, level {args.level}: training-domain validation {metric}", "",
             "Source val images and their twins in every pseudo-domain (no target image was read). "
             f"Config: `{Path(config).relative_to(ROOT) if Path(config).is_relative_to(ROOT) else config}`.", "",
             f"| arm | val per seed | mean | minus {BASELINE} (paired) | discriminator at the end |",
             "|---|---|---|---|---|"]
    base = scores.get(BASELINE, {})
    for name, per_seed in scores.items():
        seeds = sorted(per_seed)
        common = [s for s in seeds if s in base]
        diff = paired([per_seed[s] - base[s] for s in common]) if name != BASELINE else "-"
        lines.append(f"| {name} | {', '.join(f's{s} {per_seed[s]:.1f}' for s in seeds)} | "
                     f"{np.mean(list(per_seed.values())):.1f} | {diff} | {', '.join(sorted(set(states[name])))} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out or ROOT / "benchmarks" / "results" / "v3_arms" / f"validation_{args.task}.md")
    out.write_text(text, encoding="utf-8")
    print(text)
    return text


if __name__ == "__main__":
    main()
