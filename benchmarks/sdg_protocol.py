"""Protocol v2: a fair test of "does DRSF make synthetic data help where naive synthetic training does not?".

One command per task (``--task det`` or ``seg``), configured by ``configs/protocol/<task>.yaml``:

1. data: the mini-weather build with 500 images per target domain, the source ``train`` split cut into
   ``fit`` (training) and ``val`` (held out for selection); pseudo-domains (fog, dusk-rain, night; no
   twin of night_rainy, the *unseen* condition) at each fidelity level (``clean``: exact twins, ``ldm``:
   the generator failure modes of ``drsf_kit.synth.fidelity``, ``ldm_gap``: those plus the appearance gap,
   a generator's weather instead of the real one; a config may define its own under ``levels``);
2. one warm start (``drsf pretrain``, source training images only) shared by every run;
3. every (fidelity, variant, seed) run through ``drsf_kit.train.engine.fit`` (runs are paired by seed:
   same warm start, same source order; ``source_only`` does not read twins, so one run per seed serves
   every level), then training-domain validation (source ``val`` + its twins; never a target image);
4. ``benchmarks/results/sdg_protocol.json`` (tidy rows), ``sdg_protocol_<task>.md`` (per-domain tables,
   paired differences vs naive_synth, source_only and naive_consistency with 95% t intervals) and ``sdg_protocol_<task>.png``.

Resumable: finished runs (``done`` + validation file) are skipped, an interrupted one continues from its
checkpoint. Usage::

    python benchmarks/sdg_protocol.py --task det [--jobs 2] [--variants source_only,naive_synth]
        [--seeds 0,1,2,3,4] [--fidelity clean,ldm,ldm_gap] [--report-only] [--prepare-only]

A protocol YAML of your own (``--config``) writes its report to ``<output_dir>/report/`` unless
``--results DIR`` says otherwise, so a variation never overwrites the committed results.

Ablations are *arms*: a named variant with hyperparameter overrides, declared in the protocol section
(``arms: {mdsf_no_align: {variant: mdsf, hparams: {eta_max: 0.0}}}``) and listed under ``variants`` like
any variant. An arm's runs are named after it, paired by seed with every other run, and compared with
the variant it modifies as well as with the usual baselines (``configs/protocol/det_ablation.yaml``);
``compare_with: [name, ...]`` adds baselines every variant is compared with.

``--jobs 2`` trains two runs side by side with one torch thread each (on 2 cores a mini source_only
step takes 0.18 s with one thread and 0.14 s with two: small convolutions do not split well).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT_JSON = RESULTS / "sdg_protocol.json"
UNSEEN = ("night_rainy",)
METRICS = {"det": ("map50_voc07", "ap50_coco"), "seg": ("miou",)}
SELECTION_NOTE = ("Selection: training-domain validation only (source val images + their pseudo-domain twins); "
                  "no target image was read for any choice.")

# Every variant is compared, seed by seed, with these (naive_consistency: "is it DRSF or any paired loss?").
BASELINES = ("naive_synth", "source_only", "naive_consistency")


def load_protocol(task: str, path: str | None = None) -> tuple[dict, dict]:
    """(protocol section, run section) of ``configs/protocol/<task>.yaml``.

    ``extends: <file>`` (relative to the config) starts from that protocol: the keys this file's
    ``protocol`` section gives replace the base's, except ``arms``, which add to the base's by name;
    its ``run`` section, when present, replaces the base's, and an inherited ``run`` section reads the
    (possibly new) ``data_root``.
    """
    import yaml

    from drsf_kit.errors import ConfigError

    path = Path(path or ROOT / "configs" / "protocol" / f"{task}.yaml")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "extends" in doc:
        base_path = path.parent / doc["extends"]
        if not base_path.is_file():
            raise ConfigError(f"{path}: extends {doc['extends']!r}, but {base_path} does not exist")
        proto, run = load_protocol(task, str(base_path))
        mine = doc.get("protocol") or {}
        arms = {**(proto.get("arms") or {}), **(mine.get("arms") or {})}
        proto = {**proto, **mine, **({"arms": arms} if arms else {})}
        if "run" in doc:
            return proto, doc["run"]
        run = copy.deepcopy(run)
        run.setdefault("data", {})["root"] = proto["data_root"]
        return proto, run
    if "protocol" not in doc or "run" not in doc:
        raise ConfigError(f"{path}: a protocol config needs a 'protocol' and a 'run' section (or 'extends')")
    return doc["protocol"], doc["run"]


def synth_root(proto: dict, level: str) -> Path:
    """Where the twins of ``level`` live."""
    return Path(proto["synth_out"]) / level / "procedural"


def level_profile(proto: dict, level: str) -> tuple[float, float]:
    """(failure-mode strength, appearance gap) of ``level``: the protocol's ``levels`` entry
    (``{name: {fidelity: <level or strength>, appearance_gap: g}}``) or the named level of the kit."""
    from drsf_kit.errors import ConfigError
    from drsf_kit.synth.fidelity import check_gap, parse_level

    spec = (proto.get("levels") or {}).get(level)
    if spec is None:
        return parse_level(level)
    if not isinstance(spec, dict) or set(spec) - {"fidelity", "appearance_gap"}:
        raise ConfigError(f"protocol level {level!r} must be a mapping with 'fidelity' and/or 'appearance_gap', got {spec!r}")
    strength, gap = parse_level(spec.get("fidelity", 0.0))
    return strength, check_gap(spec["appearance_gap"]) if "appearance_gap" in spec else gap


def prepare(task: str, proto: dict, run: dict, levels: list[str], progress: bool = True) -> Path:
    """Build the data, the val split, the twins of every level and the warm start; returns the weights file."""
    from drsf_kit.data.mini_weather import holdout_split, make_mini_weather
    from drsf_kit.synth.base import SynthConfig
    from drsf_kit.synth.runner import run_synth
    from drsf_kit.train.pretrain import pretrain

    root = proto["data_root"]
    make_mini_weather(root, progress=progress, **proto["build"])
    holdout_split(root, int(proto["n_val"]), run["data"]["source_domain"])
    for level in levels:
        strength, gap = level_profile(proto, level)
        run_synth(SynthConfig(data=root, out=str(Path(proto["synth_out"]) / level), source=run["data"]["source_domain"],
                              domains=tuple(run["data"]["synth_domains"]), split="train",
                              fidelity=strength, appearance_gap=gap, progress=progress))
    return pretrain(pretrain_config(task, proto, run), progress=progress)


def pretrain_config(task: str, proto: dict, run: dict):
    """The warm start's PretrainConfig: the protocol's ``pretrain`` section on the source ``fit`` split."""
    from drsf_kit.train.pretrain import PretrainConfig

    return PretrainConfig(task=task, data_root=proto["data_root"], source_domain=run["data"]["source_domain"],
                          split=run["data"]["source_split"], **proto["pretrain"])


def arm(proto: dict, name: str) -> tuple[str, dict]:
    """(kit variant, hparam overrides) of a protocol entry: an arm of ``proto["arms"]`` or a plain variant."""
    from drsf_kit.errors import ConfigError

    spec = (proto.get("arms") or {}).get(name)
    if spec is None:
        return name, {}
    if not isinstance(spec, dict) or "variant" not in spec or set(spec) - {"variant", "hparams"}:
        raise ConfigError(f"protocol arm {name!r} must be a mapping with 'variant' and optional 'hparams', got {spec!r}")
    return spec["variant"], dict(spec.get("hparams") or {})


def parents(proto: dict) -> dict[str, str]:
    """{arm name: the kit variant it modifies} for every arm of the protocol."""
    return {name: arm(proto, name)[0] for name in (proto.get("arms") or {})}


def jobs(proto: dict, variants: list[str] | None, levels: list[str], seeds: list[int]) -> list[dict]:
    """One job per run: ``source_only`` (no twins) once per seed, serving every level; others per level."""
    from drsf_kit.models import get_variant

    out, seen = [], set()
    for level in levels:
        for variant in (variants or proto["variants"][level]):
            shared = not get_variant(arm(proto, variant)[0]).use_synth
            for seed in seeds:
                key = ("shared" if shared else level, variant, seed)
                if key in seen:
                    continue
                seen.add(key)
                serves = levels if shared else [level]
                out.append({"level": key[0], "variant": variant, "seed": seed, "serves": serves})
    # seed-major: every finished seed is a complete set of pairs, so a stopped protocol still compares
    return sorted(out, key=lambda j: j["seed"])


def run_config(task: str, proto: dict, run: dict, job: dict, weights: Path):
    """The RunConfig of one job."""
    from drsf_kit.config import config_from_dict

    values = copy.deepcopy(run)
    level = job["serves"][0]
    variant, overrides = arm(proto, job["variant"])
    values.update(variant=variant, seed=job["seed"], output_dir=proto["output_dir"],
                  run_name=f"{task}-{job['level']}-{job['variant']}-s{job['seed']}")
    if overrides:
        values.setdefault("model", {})["hparams"] = {**(values["model"].get("hparams") or {}), **overrides}
    values["data"]["synth_root"] = str(synth_root(proto, level))
    from drsf_kit.train.pretrain import load_key

    values["model"][load_key(pretrain_config(task, proto, run))] = str(weights)
    return config_from_dict(values)


def run_job(task: str, proto: dict, run: dict, job: dict, weights: Path) -> dict:
    """Train/evaluate (or skip) one job, then its training-domain validation per level it serves."""
    import dataclasses

    from drsf_kit.train.engine import DONE, fit
    from drsf_kit.train.evaluate import load_run
    from drsf_kit.train.selection import validate_model
    from drsf_kit.utils.io import atomic_write_json

    cfg = run_config(task, proto, run, job, weights)
    run_dir = cfg.run_dir
    timing_file = run_dir / "protocol_time.json"
    todo = [lv for lv in job["serves"] if not (run_dir / f"validation_{lv}.json").is_file()]
    if (run_dir / DONE).is_file() and not todo:
        return {"run": cfg.name, "skipped": True}
    t0 = time.perf_counter()
    fit(cfg, resume=True, start_over=True, progress=False)  # a new run starts; a stopped one continues
    t_fit = time.perf_counter() - t0
    model, _ = load_run(run_dir)
    for level in todo:
        lcfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synth_root=str(synth_root(proto, level))))
        rows = validate_model(model, lcfg, max_images=int(proto.get("val_images", 0)))
        atomic_write_json(run_dir / f"validation_{level}.json", {"level": level, "rows": rows})
    timing = {"fit_and_test_s": round(t_fit, 1), "validation_s": round(time.perf_counter() - t0 - t_fit, 1)}
    atomic_write_json(timing_file, timing)
    return {"run": cfg.name, "skipped": False, **timing}


# ------------------------------------------------------------------------------------------- rows
def collect_rows(task: str, proto: dict, run: dict, all_jobs: list[dict], weights: Path) -> list[dict]:
    """Tidy protocol rows of every finished job (summary and per-class target/test rows, val rows)."""
    from drsf_kit.utils.io import read_jsonl

    rows = []
    for job in all_jobs:
        cfg = run_config(task, proto, run, job, weights)
        results = cfg.run_dir / "results.jsonl"
        if not (cfg.run_dir / "done").is_file() or not results.is_file():
            continue
        test_rows = [r for r in read_jsonl(results) if r["metric"] in METRICS[task] + ("ap50_voc07", "iou")]
        for level in job["serves"]:
            vfile = cfg.run_dir / f"validation_{level}.json"
            val = json.loads(vfile.read_text())["rows"] if vfile.is_file() else []
            common = {"task": task, "variant": job["variant"], "seed": job["seed"], "fidelity": level,
                      "protocol": f"v2/{cfg.eval_protocol()}", "run": cfg.name}
            for r in test_rows:
                metric = {"ap50_voc07": "map50_voc07", "iou": "miou"}.get(r["metric"], r["metric"])
                rows.append({**common, "domain": r["domain"], "split": r["split"], "metric": metric,
                             "value": r["value"], "class": r.get("class"), "unseen": r["domain"] in UNSEEN,
                             "role": "source_test" if r["domain"] == cfg.data.source_domain else "target"})
            for r in val:
                rows.append({**common, "domain": r["domain"], "split": r["split"], "metric": r["metric"],
                             "value": r["value"], "class": None, "unseen": False, "role": f"val_{r['role']}"})
    return rows


def write_rows(task: str, rows: list[dict], command: str, collect_only: bool = False) -> None:
    """Replace this task's rows in sdg_protocol.json (other tasks' rows are kept). A ``--report-only``
    call keeps the command that trained the runs and records itself as ``<task>_collected``."""
    from drsf_kit.utils.io import atomic_write_json

    doc = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"rows": []}
    keep = [r for r in doc.get("rows", []) if r.get("task") != task]
    commands = dict(doc.get("commands", {}))
    if collect_only and task in commands:
        commands[f"{task}_collected"] = command
    else:
        commands[task] = command
        commands.pop(f"{task}_collected", None)
    atomic_write_json(OUT_JSON, {"selection": SELECTION_NOTE, "commands": commands,
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": keep + rows})


# ------------------------------------------------------------------------------------------- report
def target_means(rows: list[dict], task: str, metric: str) -> dict:
    """{(fidelity, variant): {seed: {"target_mean", "seen_mean", "unseen", "<domain>", "val"}}} in points."""
    from drsf_kit.train.selection import validation_score

    out: dict = {}
    by_run: dict = {}
    for r in rows:
        if r["task"] == task:
            by_run.setdefault((r["fidelity"], r["variant"], r["seed"]), []).append(r)
    for key, rs in by_run.items():
        dom = {r["domain"]: 100 * r["value"] for r in rs
               if r["metric"] == metric and r["class"] is None and r["split"] != "val" and r["value"] is not None}
        targets = [d for d, rr in ((r["domain"], r) for r in rs) if rr["role"] == "target"]
        targets = sorted(set(targets))
        if not targets or any(d not in dom for d in targets):
            continue
        entry = dict(dom)
        entry["target_mean"] = statistics.mean(dom[d] for d in targets)
        seen = [d for d in targets if d not in UNSEEN]
        entry["seen_mean"] = statistics.mean(dom[d] for d in seen) if seen else math.nan
        try:
            entry["val"] = 100 * validation_score(rs, task)
        except Exception:  # a run without validation rows yet
            entry["val"] = math.nan
        out.setdefault(key[:2], {})[key[2]] = entry
    return out


def regime(means: dict, reference: str = "clean") -> list[dict]:
    """How much of the exact-twin gain naive synthetic training keeps at each other level.

    Per seed shared by source_only and naive_synth at both levels, the gains ``g = naive_synth -
    source_only`` (target mean, points) at ``level`` and at ``reference``; returns per level the ratio of
    the mean gains ``R = mean(g_level) / mean(g_reference)`` and the paired margin ``g_level - 0.5 *
    g_reference`` with its 95% t interval (R <= 0.5 exactly when the mean margin is <= 0).
    """
    from drsf_kit.evaluation.paired import paired_difference

    def gains(level):
        so, ns = means.get((level, "source_only"), {}), means.get((level, "naive_synth"), {})
        return {s: ns[s]["target_mean"] - so[s]["target_mean"] for s in set(so) & set(ns)}

    ref = gains(reference)
    out = []
    for level in sorted({lv for lv, _ in means} - {reference}):
        mine = gains(level)
        seeds = sorted(set(mine) & set(ref))
        if not seeds:
            continue
        g, r = {s: mine[s] for s in seeds}, {s: ref[s] for s in seeds}
        margin = paired_difference(g, {s: 0.5 * r[s] for s in seeds})
        out.append({"fidelity": level, "reference": reference, "n": len(seeds),
                    "gain": statistics.mean(g.values()), "reference_gain": statistics.mean(r.values()),
                    "ratio": statistics.mean(g.values()) / statistics.mean(r.values()) if any(r.values()) else math.nan,
                    "margin": margin.mean, "low": margin.low, "high": margin.high})
    return out


def _interval(low: float, high: float) -> str:
    """``[low, high]`` in signed points, or ``-`` without an interval (one seed)."""
    return "-" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"


def _fmt(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(task: str, rows: list[dict], arm_parents: dict[str, str] | None = None,
           extra_baselines: tuple[str, ...] = ()) -> str:
    """The markdown report and the figure of paired differences; returns the markdown. An arm
    (``arm_parents``: arm -> variant) is also compared with the variant it modifies, and every variant
    with ``extra_baselines`` (the protocol's ``compare_with`` list) as well as with ``BASELINES``."""
    from drsf_kit.evaluation.paired import paired_difference

    lines = [f"# Protocol v2, {task}", "", SELECTION_NOTE,
             "Targets scored on all their images (500 each); night_rainy has no pseudo-domain (unseen). "
             "Values: mean ± sample std over seeds, in points.", ""]
    diffs = []
    for metric in METRICS[task]:
        means = target_means(rows, task, metric)
        if not means:
            continue
        domains = sorted({d for runs in means.values() for e in runs.values() for d in e
                          if d not in ("target_mean", "seen_mean", "val")})
        header = ["fidelity", "variant", "seeds"] + [f"{d} (unseen)" if d in UNSEEN else d for d in domains] + [
            "target mean", "seen-target mean", "val (selection)"]
        lines += [f"## {metric} (protocol v2/all_images; selection on training-domain validation)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (level, variant), runs in sorted(means.items()):
            cells = [level, variant, str(len(runs))] + [_fmt([e[d] for e in runs.values() if d in e]) for d in domains]
            cells += [_fmt([e[k] for e in runs.values()]) for k in ("target_mean", "seen_mean", "val")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        ratios = regime(means)
        if ratios:
            lines += [f"### Regime, {metric}: naive_synth's gain over source_only against the clean level's "
                      "(the DRSF paper's regime: at most half)", "",
                      "| fidelity | seeds | gain (points) | clean gain | ratio R | gain - half the clean gain | 95% interval |",
                      "|---|---|---|---|---|---|---|"]
            for r in ratios:
                lines.append(f"| {r['fidelity']} | {r['n']} | {r['gain']:+.1f} | {r['reference_gain']:+.1f} | "
                             f"{r['ratio']:.2f} | {r['margin']:+.1f} | {_interval(r['low'], r['high'])} |")
            lines.append("")
        lines += [f"### Paired differences, {metric} (per seed, 95% paired-t interval)", "",
                  "| fidelity | variant | vs | quantity | mean | 95% interval | n |", "|---|---|---|---|---|---|---|"]
        for (level, variant), runs in sorted(means.items()):
            parent = (arm_parents or {}).get(variant)
            for base in dict.fromkeys(BASELINES + tuple(extra_baselines) + ((parent,) if parent else ())):
                # source_only is the floor, not a contender; naive_consistency vs naive_synth is listed once
                if variant in (base, "source_only") or (level, base) not in means or (
                        variant, base) == ("naive_synth", "naive_consistency"):
                    continue
                for quantity in ("target_mean", "seen_mean") + UNSEEN:
                    a = {s: e[quantity] for s, e in runs.items() if quantity in e}
                    b = {s: e[quantity] for s, e in means[(level, base)].items() if quantity in e}
                    if not set(a) & set(b):
                        continue
                    d = paired_difference(a, b)
                    diffs.append({"metric": metric, "fidelity": level, "variant": variant, "baseline": base,
                                  "quantity": quantity, **d.as_dict()})
                    lines.append(f"| {level} | {variant} | {base} | {quantity} | {d.mean:+.1f} | "
                                 f"{_interval(d.low, d.high)} | {d.n} |")
        lines.append("")
    if diffs:
        figure(task, diffs)
        lines += [f"Figure: `sdg_protocol_{task}.png` (paired differences of the target mean with 95% intervals).", ""]
    return "\n".join(lines)


def figure(task: str, diffs: list[dict]) -> Path:
    """Seaborn point plot of the target-mean differences with their intervals, one panel per baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([d for d in diffs if d["quantity"] == "target_mean" and d["metric"] == METRICS[task][0]])
    if df.empty:
        return RESULTS / f"sdg_protocol_{task}.png"
    df["label"] = df["variant"] + " (" + df["fidelity"] + ")"
    bases = sorted(df["baseline"].unique())
    ncols = min(3, len(bases))  # wrap: five baselines side by side are too narrow to read
    nrows = math.ceil(len(bases) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, nrows * (0.45 * df["label"].nunique() + 1.6)),
                             squeeze=False)
    for ax in axes.flat[len(bases):]:
        ax.set_visible(False)
    palette = dict(zip(sorted(df["fidelity"].unique()), sns.color_palette("deep")))
    for ax, base in zip(axes.flat, bases):
        sub = df[df["baseline"] == base].sort_values("label")
        y = range(len(sub))
        for yi, (_, r) in zip(y, sub.iterrows()):
            ax.errorbar(r["mean"], yi, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]] if not math.isnan(r["low"]) else None,
                        fmt="o", color=palette[r["fidelity"]], capsize=3)
        ax.set_yticks(list(y), sub["label"].tolist())
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_title(f"vs {base}")
        ax.set_xlabel(f"paired difference, target mean {METRICS[task][0]} (points)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"fidelity {lv}") for lv, c in palette.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncol=len(handles))
    sns.despine(fig)
    fig.suptitle(f"Protocol v2 {task}: paired differences, 95% t intervals (selection: training-domain val)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"sdg_protocol_{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- main
def job_finished(task: str, proto: dict, run: dict, job: dict, weights: Path) -> bool:
    """True when the job's run is done and validated on every level it serves."""
    run_dir = run_config(task, proto, run, job, weights).run_dir
    return (run_dir / "done").is_file() and all((run_dir / f"validation_{lv}.json").is_file() for lv in job["serves"])


def run_sharded(args, task: str, proto: dict, run: dict, todo: list[dict], weights: Path) -> int:
    """``--jobs N``: N child processes, child k running jobs k, k+N, ... (``--shard k/N``) with
    ``threads // N`` torch threads each; a progress bar over runs while they work. Returns the number
    of children that failed (their logs are named)."""
    import os
    import subprocess

    from tqdm.auto import tqdm

    n = args.jobs
    log_dir = Path(proto["output_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, args.threads // n)
    passthrough = ["--task", task, "--fidelity", args.fidelity, "--threads", str(threads), "--skip-prepare"]
    for flag in ("config", "variants", "seeds", "results"):
        if getattr(args, flag):
            passthrough += [f"--{flag}", getattr(args, flag)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    children = []
    for k in range(n):
        log = log_dir / f"shard_{k}of{n}.log"
        with open(log, "a", encoding="utf-8") as fh:
            children.append((subprocess.Popen([sys.executable, __file__, *passthrough, "--shard", f"{k}/{n}"],
                                              stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()), log))
    bar = tqdm(total=len(todo), desc=f"protocol {task} ({n} processes)", unit="run")
    while True:
        done = sum(job_finished(task, proto, run, j, weights) for j in todo)
        bar.update(done - bar.n)
        if all(c.poll() is not None for c, _ in children):
            break
        time.sleep(10)
    bar.close()
    failed = [(c.returncode, log) for c, log in children if c.returncode != 0]
    for rc, log in failed:
        print(f"{log}: a protocol process exited with status {rc}; rerun the same command to resume", file=sys.stderr)
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    """Parse options, prepare, run the pending jobs with a progress bar, write rows, tables and figure."""
    import torch
    from tqdm.auto import tqdm

    from drsf_kit.utils.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["det", "seg"], required=True)
    ap.add_argument("--config", default=None, help="protocol YAML (default configs/protocol/<task>.yaml)")
    ap.add_argument("--variants", default=None, help="comma list; default: the config's per-level lists")
    ap.add_argument("--seeds", default=None, help="comma list (default: the config's)")
    ap.add_argument("--fidelity", default=None, help="comma list of levels (default: every level of the config)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (default 2)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained side by side, each with threads/jobs torch threads (on 2 cores a "
                         "source_only step takes 0.18 s with 1 thread and 0.14 s with 2, so --jobs 2 gets more done)")
    ap.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/N: a --jobs child's share of the runs
    ap.add_argument("--skip-prepare", action="store_true", help=argparse.SUPPRESS)  # --jobs children: done by the parent
    ap.add_argument("--prepare-only", action="store_true", help="build data, twins and the warm start, then stop")
    ap.add_argument("--report-only", action="store_true", help="only collect finished runs and write the outputs")
    ap.add_argument("--results", default=None,
                    help="folder of the report (default benchmarks/results; with --config: <output_dir>/report)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    proto, run = load_protocol(args.task, args.config)
    global RESULTS, OUT_JSON
    if args.results or args.config:
        RESULTS = Path(args.results) if args.results else Path(proto["output_dir"]) / "report"
        OUT_JSON = RESULTS / "sdg_protocol.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    levels = [s.strip() for s in args.fidelity.split(",") if s.strip()] if args.fidelity else list(proto["variants"])
    args.fidelity = ",".join(levels)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(proto["seeds"])
    variants = [s.strip() for s in args.variants.split(",")] if args.variants else None
    command = "python benchmarks/sdg_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only or args.skip_prepare:
        from drsf_kit.train.pretrain import weights_path

        weights = weights_path(pretrain_config(args.task, proto, run))
    else:
        weights = prepare(args.task, proto, run, levels)
    if args.prepare_only:
        print(weights)
        return 0
    todo = jobs(proto, variants, levels, seeds)
    failed = 0
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        for job in todo[k::n]:
            print(json.dumps(run_job(args.task, proto, run, job, weights)), flush=True)
        return 0
    if not args.report_only and args.jobs > 1:
        failed = run_sharded(args, args.task, proto, run, todo, weights)
    elif not args.report_only:
        for job in tqdm(todo, desc=f"protocol {args.task}", unit="run"):
            info = run_job(args.task, proto, run, job, weights)
            tqdm.write(json.dumps(info))
    # every finished run of the config (not only this invocation's), so partial invocations add up
    everything = jobs(proto, None, list(proto["variants"]), list(proto["seeds"]))
    extra = [j for j in todo if (j["level"], j["variant"], j["seed"]) not in
             {(e["level"], e["variant"], e["seed"]) for e in everything}]
    rows = collect_rows(args.task, proto, run, everything + extra, weights)
    write_rows(args.task, rows, command, collect_only=args.report_only)
    commands = json.loads(OUT_JSON.read_text())["commands"]
    footer = (f"\nTraining command recorded: `{commands[args.task]}` (runs of other variants or levels may come "
              "from other invocations; docs/protocol.md section 6 lists every command)\n")
    if f"{args.task}_collected" in commands:
        footer += f"Collected: `{commands[args.task + '_collected']}`\n"
    text = report(args.task, rows, parents(proto), tuple(proto.get("compare_with") or ()))
    atomic_write_text(RESULTS / f"sdg_protocol_{args.task}.md", text + footer)
    print(RESULTS / f"sdg_protocol_{args.task}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
