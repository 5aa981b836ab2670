"""The embedded single-domain-generalization benchmark: every variant x task x seed on mini-weather.

Each run is `drsf train --config configs/mini_<task>.yaml variant=V seed=S --resume` in its own process
(finished runs are skipped, interrupted ones continue, a finished run of another config is refused:
``drsf_kit.workflows.runs.run_status``, the check the notebooks and the demo use); the data and the
pseudo-domains are made first when missing (``workflows.runs.ensure_data`` / ``ensure_synth``). Trained on daytime_clear plus the procedural
pseudo-domains and scored on the source test split and the four real target domains. Writes
``benchmarks/results/sdg_mini.json`` (the tidy rows of every run, wall times, training diagnostics,
command, date, machine) and ``sdg_mini.md`` (per-domain mAP50 by both metrics and mIoU, mean ± std over
seeds, and the goal check: target mean of drsf >= naive_synth + 2 and >= source_only + 5 points).

Usage: ``python benchmarks/sdg_mini.py --seeds 0 1 2 [--data PATH] [--synth PATH] [--tasks det seg]
[--variants ...] [--max-steps N] [--out runs/sdg_mini] [--fresh]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from drsf_kit.workflows import runs as workflows
from drsf_kit.models import VARIANTS
from drsf_kit.train.rundir import RunDir
from drsf_kit.utils.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = {"det": ("map50_voc07", "ap50_coco"), "seg": ("miou",)}
STATS = ("gate_mean", "gate_std", "gamma_mean", "entropy_mean", "disc_acc", "lambda_mean", "mix_fraction", "grl_coeff")


def run_overrides(args) -> list[str]:
    """The config overrides every run of this sweep gets (data, pseudo-domains, steps, the extra ones)."""
    items = [f"output_dir={args.out}"]
    if args.data:
        items.append(f"data.root={args.data}")
    if args.synth:
        items.append(f"data.synth_root={args.synth}")
    if args.max_steps:
        items.append(f"train.max_steps={args.max_steps}")
    return items + list(args.overrides)


def train_one(task: str, variant: str, seed: int, args) -> dict:
    """Run (or resume, or skip when done) one training run in a child process."""
    config = ROOT / "configs" / f"mini_{task}.yaml"
    cfg = workflows.run_config(task, variant, seed, run_overrides(args), config=config, root=ROOT)
    state, keys = workflows.run_status(cfg)
    if state == "other" and not args.fresh:
        raise SystemExit(f"error: {cfg.run_dir} holds a finished run of another config ({', '.join(keys)}); "
                         "pass --fresh to retrain it or choose another --out")
    workflows.ensure_data(cfg.data.root)
    if cfg.spec.use_synth:
        workflows.ensure_synth(cfg.data.root, cfg.data.synth_root)
    cmd = [sys.executable, "-m", "drsf_kit", "train", "--config", str(config), f"variant={variant}", f"seed={seed}",
           "--no-progress", *(["--overwrite"] if args.fresh else ["--resume", "--start-over"]), *run_overrides(args)]
    run_dir = Path(cfg.run_dir)
    was_done = state == "done" and not args.fresh
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    info = {"task": task, "variant": variant, "seed": seed, "run_dir": str(run_dir), "exit_code": code,
            "skipped_done": was_done, "wall_s": None if was_done else round(time.perf_counter() - t0, 1),
            "peak_rss_mb": None if was_done else round(usage.ru_maxrss / 1024, 1),
            # CPU seconds of the run: what it costs on an idle machine, whatever else was running
            "cpu_s": None if was_done else round(usage.ru_utime + usage.ru_stime, 1),
            "error": err.strip().splitlines()[-1] if code and err.strip() else None}
    info.update(from_metrics(run_dir))
    return info


def from_metrics(run_dir: Path) -> dict:
    """Diagnostics, final loss, steps and the run's own duration (first to last log row) from metrics.jsonl."""
    run = RunDir(run_dir)
    metrics = run.metric_rows()
    logged = [r for r in metrics if "loss" in r]
    tail = logged[-5:]  # the last logged rows describe the trained blocks
    times = [r["time"] for r in metrics if "time" in r]
    return {
        "diagnostics": {k: statistics.mean(r[f"stats/{k}"] for r in tail) for k in STATS
                        if tail and all(f"stats/{k}" in r for r in tail)},
        "final_loss": tail[-1]["loss"] if tail else None,
        "steps": logged[-1]["step"] if logged else None,
        "resumed": len(run.launches()) > 1,  # run.json records every launch; a resume is a second one
        # training + final evaluation, without process start-up; spans any pause when resumed
        "run_s": round(times[-1] - times[0], 1) if len(times) > 1 else None,
    }


def collect_one(task: str, variant: str, seed: int, args) -> dict:
    """The record of a finished run without running anything (its wall time is in the earlier report)."""
    run_dir = Path(args.out) / f"{task}-{variant}-{seed}"
    info = {"task": task, "variant": variant, "seed": seed, "run_dir": str(run_dir), "exit_code": 0,
            "skipped_done": True, "wall_s": None, "peak_rss_mb": None, "cpu_s": None, "error": None}
    info.update(from_metrics(run_dir))
    return info


def summary_tables(df: pd.DataFrame, tasks: list[str]) -> tuple[str, dict]:
    """Markdown tables per task/metric and the goal check on the target mean (points)."""
    from drsf_kit.evaluation.tables import TARGET_MEAN, domain_table, to_markdown

    parts, goals = [], {}
    for task in tasks:
        sub = df[df["task"] == task]
        if sub.empty:
            continue
        for metric in METRICS[task]:
            table = domain_table(sub, metric, task=task)
            parts.append(f"### {task}: {metric}\n\n{to_markdown(table)}")
            means = table[TARGET_MEAN] if TARGET_MEAN in table else None
            if means is None or metric not in ("map50_voc07", "miou"):
                continue
            get = {v: float(means[v]) * 100 for v in means.index if v in VARIANTS}
            if "drsf" in get:
                goals[f"{task}/{metric}"] = {
                    "target_mean_pts": {k: round(v, 2) for k, v in get.items()},
                    "drsf_minus_naive_synth": round(get["drsf"] - get["naive_synth"], 2) if "naive_synth" in get else None,
                    "drsf_minus_source_only": round(get["drsf"] - get["source_only"], 2) if "source_only" in get else None,
                }
                g = goals[f"{task}/{metric}"]
                g["met"] = (g["drsf_minus_naive_synth"] is not None and g["drsf_minus_naive_synth"] >= 2
                            and g["drsf_minus_source_only"] is not None and g["drsf_minus_source_only"] >= 5)
    return "\n".join(parts), goals


def main() -> None:
    """Train what is missing, gather every run's rows, write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="mini-weather root (default: the config's data.root)")
    parser.add_argument("--synth", default=None, help="pseudo-domain root (default: the config's data.synth_root)")
    parser.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=["det", "seg"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--out", default="runs/sdg_mini", help="where the runs go")
    parser.add_argument("--fresh", action="store_true", help="retrain finished runs instead of reusing them")
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing: report the finished runs of the chosen seeds/tasks/variants")
    parser.add_argument("--report", default="sdg_mini",
                        help="name of the report files: benchmarks/results/<report>.json and .md")
    parser.add_argument("overrides", nargs="*", help="further config overrides for every run")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:  # seed-major: a partial sweep still covers every variant of the first seeds
        for task in args.tasks:
            for variant in args.variants:
                if args.collect_only and not RunDir(Path(args.out) / f"{task}-{variant}-{seed}").is_finished():
                    continue
                info = train_one(task, variant, seed, args) if not args.collect_only else collect_one(task, variant, seed, args)
                runs.append(info)
                print(f"{task} {variant} seed {seed}: exit {info['exit_code']} wall {info['wall_s']} s "
                      f"{info['error'] or ''}", flush=True)
    rows = []
    for info in runs:
        if info["exit_code"] == 0:
            rows += RunDir(info["run_dir"]).result_rows()
    df = pd.DataFrame(rows)
    tables, goals = summary_tables(df, args.tasks) if rows else ("(no finished runs)", {})
    report = {"benchmark": "sdg_mini", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.node()} ({os.cpu_count()} cpus)",
              "goals": goals, "runs": runs, "rows": rows}
    atomic_write_json(RESULTS / f"{args.report}.json", report)
    diag = ["| run | " + " | ".join(STATS) + " | final loss | run s |", "|---|" + "---:|" * (len(STATS) + 2)]
    for info in runs:
        d = info["diagnostics"]
        cells = [f"{d[k]:.3f}" if k in d else "" for k in STATS]
        loss = "" if info["final_loss"] is None else f"{info['final_loss']:.3f}"
        diag.append(f"| {Path(info['run_dir']).name} | " + " | ".join(cells) + f" | {loss} | {info['run_s'] or ''} |")
    md = (f"# {args.report} results\n\nCommand: `{report['command']}`; {report['date']}; machine {report['machine']}.\n"
          f"Values in percent; the protocol and splits are in each caption.\n\n{tables}\n"
          f"## Goal check (target mean, points)\n\n```\n{goals}\n```\n\n"
          f"## Training diagnostics (mean of the last 5 logged steps; run s = training + evaluation, from "
          f"metrics.jsonl, on a machine shared with other jobs)\n\n" + "\n".join(diag) + "\n")
    atomic_write_text(RESULTS / f"{args.report}.md", md)
    print(md)


if __name__ == "__main__":
    main()
