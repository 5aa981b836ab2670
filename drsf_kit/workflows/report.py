"""The protocol's report: rows collected from the run folders (through ``RunDir``), per-seed target means,
the regime ratio, paired differences with 95% t intervals, the Markdown tables and the figure.

Every number and count in the text comes from the rows or the data build; ``drsf_kit.workflows.protocol``
collects and calls it, and a test can call it on rows it writes itself.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from drsf_kit.config import RunConfig
from drsf_kit.evaluation.paired import paired_difference
from drsf_kit.train.rundir import RunDir
from drsf_kit.train.selection import validation_score
from drsf_kit.utils.io import atomic_write_json

ROWS_FILE = "sdg_protocol.json"  # the tidy rows of every task, in the results folder
UNSEEN = ("night_rainy",)
METRICS = {"det": ("map50_voc07", "ap50_coco"), "seg": ("miou",)}
SELECTION_NOTE = ("Selection: training-domain validation only (source val images + their pseudo-domain twins); "
                  "no target image was read for any choice.")

# Every variant is compared, seed by seed, with these (naive_consistency: "is it DRSF or any paired loss?").
BASELINES = ("naive_synth", "source_only", "naive_consistency")


# ------------------------------------------------------------------------------------------- rows
def collect_rows(task: str, runs: list[tuple[dict, RunConfig]]) -> list[dict]:
    """Tidy protocol rows of every finished run of ``runs`` (``(job, config)`` pairs): summary and
    per-class target/test rows, and the validation rows of each level the run serves."""
    rows = []
    for job, cfg in runs:
        run_dir = RunDir(cfg.run_dir)
        if not run_dir.is_finished() or not run_dir.results_path.is_file():
            continue
        test_rows = [r for r in run_dir.result_rows() if r["metric"] in METRICS[task] + ("ap50_voc07", "iou")]
        for level in job["serves"]:
            vfile = run_dir.validation_path(level)
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


def write_rows(results_dir: str | Path, task: str, rows: list[dict], command: str,
               collect_only: bool = False) -> dict[str, str]:
    """Replace this task's rows in ``<results_dir>/sdg_protocol.json`` (other tasks' rows are kept); returns
    the commands recorded there. A ``--report-only`` call keeps the command that trained the runs and
    records itself as ``<task>_collected``."""
    out_json = Path(results_dir) / ROWS_FILE
    doc = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": []}
    keep = [r for r in doc.get("rows", []) if r.get("task") != task]
    commands = dict(doc.get("commands", {}))
    if collect_only and task in commands:
        commands[f"{task}_collected"] = command
    else:
        commands[task] = command
        commands.pop(f"{task}_collected", None)
    atomic_write_json(out_json, {"selection": SELECTION_NOTE, "commands": commands,
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": keep + rows})
    return commands


# ------------------------------------------------------------------------------------------- report
def target_means(rows: list[dict], task: str, metric: str) -> dict:
    """{(fidelity, variant): {seed: {"target_mean", "seen_mean", "unseen", "<domain>", "val"}}} in points."""
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


def scored_images(n_target: int | None) -> str:
    """How the targets were scored, from the data build: ``all their images (N each)``."""
    return "all their images" + (f" ({int(n_target)} each)" if n_target else "")


def report(task: str, rows: list[dict], arm_parents: dict[str, str] | None = None,
           extra_baselines: tuple[str, ...] = (), figure_dir: str | Path | None = None,
           n_target: int | None = None) -> str:
    """The markdown report and, with ``figure_dir``, the figure of paired differences; returns the markdown.

    An arm (``arm_parents``: arm -> variant) is also compared with the variant it modifies, and every
    variant with ``extra_baselines`` (the protocol's ``compare_with`` list) as well as with ``BASELINES``.
    ``n_target``: images per target domain of the data build (the protocol's ``build.n_target``).
    """
    lines = [f"# Protocol v2, {task}", "", SELECTION_NOTE,
             f"Targets scored on {scored_images(n_target)}; night_rainy has no pseudo-domain (unseen). "
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
    if diffs and figure_dir is not None:
        figure(task, diffs, figure_dir)
        lines += [f"Figure: `sdg_protocol_{task}.png` (paired differences of the target mean with 95% intervals).", ""]
    return "\n".join(lines)


def figure(task: str, diffs: list[dict], out_dir: str | Path) -> Path:
    """Seaborn point plot of the target-mean differences with their intervals, one panel per baseline,
    saved as ``<out_dir>/sdg_protocol_<task>.png``."""
    import seaborn as sns  # the plotting stack is optional on a training machine: only the figure needs it

    path = Path(out_dir) / f"sdg_protocol_{task}.png"
    df = pd.DataFrame([d for d in diffs if d["quantity"] == "target_mean" and d["metric"] == METRICS[task][0]])
    if df.empty:
        return path
    df["label"] = df["variant"] + " (" + df["fidelity"] + ")"
    bases = sorted(df["baseline"].unique())
    ncols = min(3, len(bases))  # wrap: five baselines side by side are too narrow to read
    nrows = math.ceil(len(bases) / ncols)
    # a Figure of its own, not pyplot: no global backend or figure state is touched
    fig = Figure(figsize=(5.5 * ncols, nrows * (0.45 * df["label"].nunique() + 1.6)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
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
    handles = [Line2D([], [], color=c, marker="o", ls="", label=f"fidelity {lv}") for lv, c in palette.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncol=len(handles))
    sns.despine(fig)
    fig.suptitle(f"Protocol v2 {task}: paired differences, 95% t intervals (selection: training-domain val)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
