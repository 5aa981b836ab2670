"""The pre-registered confirmation (``docs/preregistration.md``): collect its builds, test its contrasts.

The plan (``configs/protocol/confirm/plan.yaml``) names the method, the baselines with their goals, the
tasks, levels and builds; each build of a task is a protocol config (``configs/protocol/confirm/<task>_b<build>.yaml``)
whose runs ``drsf protocol`` trains. ``drsf confirm`` then

1. collects every finished run of every build through the protocol's own collector, each row with its
   ``build`` (``sdg_confirm.json``);
2. pairs runs by unit, a (build, seed), and for each task x level x baseline takes the paired differences of
   target means (method - baseline, points);
3. tests each with an exact two-sided sign-flip permutation test and gives a 95 % t interval
   (``drsf_kit.evaluation.paired``, on scipy.stats),
   adjusts the p-values by Holm over the whole family, and reads the verdict by the written rule;
4. writes the Markdown report and the figure. Until every cell holds its units the report is interim and
   reads no verdict.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.paired import paired_difference, sign_flip_p
from drsf_kit.train.pretrain import weights_path
from drsf_kit.utils.io import atomic_write_json, atomic_write_text
from drsf_kit.workflows import report as protocol_report
from drsf_kit.workflows.protocol import jobs_of, load_protocol, pretrain_config, run_config
from drsf_kit.workflows.runs import project_root

PLAN = Path("configs") / "protocol" / "confirm" / "plan.yaml"
ROWS_FILE = "sdg_confirm.json"
HEADLINE = {"det": "map50_voc07", "seg": "miou"}
PLAN_KEYS = {"method", "baselines", "context", "tasks", "levels", "builds", "units_per_cell", "alpha", "test", "interval"}


# ------------------------------------------------------------------------------------------- plan
def load_plan(path: str | Path | None = None) -> dict:
    """The confirmation's plan; a missing key or an unknown one is one clear error naming the file."""
    path = Path(path) if path else project_root() / PLAN
    if not path.is_file():
        raise ConfigError(f"{path}: no such confirmation plan")
    plan = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(plan, dict) or set(plan) != PLAN_KEYS:
        have = set(plan) if isinstance(plan, dict) else set()
        raise ConfigError(f"{path}: a confirmation plan has exactly the keys {', '.join(sorted(PLAN_KEYS))}; "
                          f"missing: {', '.join(sorted(PLAN_KEYS - have)) or 'none'}, "
                          f"unknown: {', '.join(sorted(have - PLAN_KEYS)) or 'none'}")
    plan["path"] = path
    return plan


def build_config(plan: dict, task: str, build: int) -> Path:
    """The protocol config of one build of ``task`` (beside the plan)."""
    return Path(plan["path"]).parent / f"{task}_b{build}.yaml"


# ------------------------------------------------------------------------------------------- rows
def collect(plan: dict, runs_root: str | Path | None = None) -> list[dict]:
    """Tidy rows of every finished run of every build, each with its ``build``; ``runs_root`` is the
    checkout the runs were trained in (their configs' relative folders are read from there)."""
    root = Path(runs_root) if runs_root else project_root()
    rows = []
    for task in plan["tasks"]:
        for build in plan["builds"]:
            proto, run = load_protocol(task, str(build_config(plan, task, build)))
            # the config's folders are relative to the checkout the runs were trained in
            proto = {**proto, "output_dir": str(root / proto["output_dir"]), "data_root": str(root / proto["data_root"])}
            try:
                weights = weights_path(pretrain_config(task, proto, run))
            except DataError:  # this build's data is not made yet, so it has no runs
                continue
            jobs = jobs_of(proto, None, list(plan["levels"]), list(proto["seeds"]))
            runs = [(job, run_config(task, proto, run, job, weights)) for job in jobs]
            rows += [{**r, "build": build} for r in protocol_report.collect_rows(task, runs)]
    return rows


def runs_of(rows: list[dict], task: str, build: int) -> int:
    """How many runs of ``task``'s ``build`` the rows hold."""
    return len({(r["fidelity"], r["variant"], r["seed"]) for r in rows if r["task"] == task and r["build"] == build})


def with_earlier_rows(plan: dict, rows: list[dict], earlier: str | Path, commit: str) -> tuple[list[dict], list[dict]]:
    """Complete ``rows`` with an earlier collection (a ``sdg_confirm.json``) for every build the runs gave none.

    For the builds whose run folders are gone (a lost machine): the earlier file's rows of a (task, build)
    join only when the runs under the root hold no run of it, and only when both were trained from the same
    commit. Returns the rows and one source record per (task, build): where its rows came from.
    """
    earlier = Path(earlier)
    try:
        doc = json.loads(earlier.read_text(encoding="utf-8"))
        old_rows, old_commit = doc["rows"], doc["trained_at"]
    except FileNotFoundError:
        raise ConfigError(f"{earlier}: no such earlier collection") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{earlier}: not a confirmation rows file ({type(err).__name__}: {err})") from None
    if old_commit != commit:
        raise ConfigError(f"{earlier}: its rows were trained from {old_commit[:12]}, the runs under the root from "
                          f"{commit[:12]}; a confirmation pairs runs of one commit only")
    old_sources = {(s["task"], s["build"]): s for s in doc.get("sources", [])}
    out, sources = list(rows), []
    for task in plan["tasks"]:
        for build in plan["builds"]:
            n = runs_of(rows, task, build)
            if n:
                sources.append({"task": task, "build": build, "runs": n, "source": "runs"})
                continue
            mine = [r for r in old_rows if r["task"] == task and r["build"] == build]
            before = old_sources.get((task, build), {})
            if mine and before.get("source", "runs") == "runs":  # first reuse: the earlier file collected them
                before = {"source": "earlier collection", "file": str(earlier), "collected": doc.get("date", "unknown"),
                          "command": doc.get("command", "")}
            out += mine
            sources.append({"task": task, "build": build, "runs": runs_of(mine, task, build),
                            **({k: before[k] for k in ("source", "file", "collected", "command") if k in before}
                               if mine else {"source": "none"})})
    return out, sources


def unit_means(rows: list[dict], task: str) -> dict:
    """{(level, variant): {(build, seed): target mean in points}} of ``task``'s rows."""
    out: dict = {}
    for build in sorted({r["build"] for r in rows if r["task"] == task}):
        mine = [r for r in rows if r["task"] == task and r["build"] == build]
        for key, per_seed in protocol_report.target_means(mine, task, HEADLINE[task]).items():
            for seed, entry in per_seed.items():
                out.setdefault(key, {})[(build, seed)] = entry["target_mean"]
    return out


# ------------------------------------------------------------------------------------------- statistics
def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (Holm 1979: the k-th smallest of m is
    multiplied by m - k + 1, then made monotone; capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(mean: float, p_holm: float, alpha: float) -> str:
    """The pre-registered rule: confirmed / reversed at Holm-adjusted p <= alpha by the sign of the mean."""
    if p_holm <= alpha:
        return "confirmed" if mean > 0 else "reversed"
    return "not confirmed"


def contrasts(plan: dict, rows: list[dict]) -> list[dict]:
    """One record per task x level x baseline: units, differences, mean, interval, raw and Holm p, verdict.

    ``complete`` is False while any cell lacks its units; then p-values and verdicts are left out.
    """
    out = []
    for task in plan["tasks"]:
        means = unit_means(rows, task)
        for level in plan["levels"]:
            mine = means.get((level, plan["method"]), {})
            for baseline, goal in plan["baselines"].items():
                theirs = means.get((level, baseline), {})
                rec = {"task": task, "level": level, "baseline": baseline, "goal": float(goal),
                       "units": [], "diffs": [], "n": 0, "mean": math.nan, "ci": (math.nan, math.nan), "goal_met": False}
                if set(mine) & set(theirs):  # units are (build, seed): paired like seeds
                    pd = paired_difference(mine, theirs)
                    rec.update(units=[list(u) for u in pd.seeds], diffs=[mine[u] - theirs[u] for u in pd.seeds], n=pd.n,
                               mean=pd.mean, ci=(pd.low, pd.high), goal_met=pd.mean >= goal and pd.low > 0)
                out.append(rec)
    complete = all(r["n"] >= plan["units_per_cell"] for r in out)
    if complete:
        for r in out:
            r["p"] = sign_flip_p(r["diffs"])
        for r, adj in zip(out, holm([r["p"] for r in out])):
            r["p_holm"] = adj
            r["verdict"] = verdict(r["mean"], adj, plan["alpha"])
    for r in out:
        r["complete"] = complete
    return out


# ------------------------------------------------------------------------------------------- outputs
def trained_commit(runs_root: Path) -> str:
    """The commit the checkout holding the runs is at ('unknown' outside git)."""
    try:
        return subprocess.run(["git", "-C", str(runs_root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _num(x: float, fmt: str = "+.1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def sources_text(sources: list[dict]) -> list[str]:
    """Where each build's rows came from, one line per build (from the source records)."""
    lines = ["Where the rows come from:", ""]
    for s in sources:
        where = {"runs": "its run folders, collected now",
                 "none": "no finished run yet"}.get(s["source"], f"rows of an earlier collection (`{s.get('command', '')}`, "
                                                                 f"{s.get('collected', 'unknown')}; no run folder of it under the runs root)")
        lines.append(f"- {s['task']} build {s['build']}: {s['runs']} run{'' if s['runs'] == 1 else 's'}, from {where}")
    return lines + [""]


def report_text(plan: dict, rows: list[dict], records: list[dict], commit: str, sources: list[dict] | None = None) -> str:
    """The Markdown report; every count and number comes from the rows, the plan and the source records."""
    complete = all(r["complete"] for r in records)
    lines = ["# Pre-registered confirmation: drsf against its baselines on fresh builds", "",
             f"Plan: `{Path(plan['path']).relative_to(project_root()) if Path(plan['path']).is_relative_to(project_root()) else plan['path']}` "
             "(written with docs/preregistration.md before any run). "
             f"Runs trained from commit `{commit[:12]}`; builds {', '.join(map(str, plan['builds']))}; "
             f"{plan['units_per_cell']} paired units (build, seed) per cell. "
             "Primary quantity: target mean (the four real target domains, all their images), in points. "
             + protocol_report.SELECTION_NOTE, ""]
    if sources and any(s["source"] not in ("runs", "none") for s in sources):
        lines += sources_text(sources)
    if complete:
        m = len(records)
        lines += [f"**Complete.** {plan['test'].capitalize()}; Holm over the {m} contrasts at family-wise "
                  f"alpha = {plan['alpha']}; {plan['interval']}.", "",
                  "| task | level | drsf minus | n | mean | 95 % t interval | exact p | Holm p | verdict | issue goal (>= goal, interval above 0) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in records:
            lines.append(f"| {r['task']} | {r['level']} | {r['baseline']} | {r['n']} | {_num(r['mean'])} | "
                         f"[{_num(r['ci'][0])}, {_num(r['ci'][1])}] | {r['p']:.4f} | {r['p_holm']:.4f} | "
                         f"{r['verdict']} | {'met' if r['goal_met'] else 'missed'} (+{r['goal']:g}) |")
        counts = {v: sum(r["verdict"] == v for r in records) for v in ("confirmed", "not confirmed", "reversed")}
        lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {m}."]
    else:
        lines += ["**Interim: no verdict.** Not every cell holds its units yet; the pre-registration reads no "
                  "p-value and no verdict until it does. Finished units so far:", "",
                  "| task | level | drsf minus | units | mean of the differences so far |", "|---|---|---|---|---|"]
        for r in records:
            lines.append(f"| {r['task']} | {r['level']} | {r['baseline']} | {r['n']} of {plan['units_per_cell']} | "
                         f"{_num(r['mean'])} |")
    lines += ["", "Target mean per variant, by build (mean over the build's finished seeds; n = runs):", "",
              "| task | level | variant | " + " | ".join(f"build {b}" for b in plan["builds"]) + " | all |",
              "|---|---|---|" + "---|" * (len(plan["builds"]) + 1)]
    for task in plan["tasks"]:
        means = unit_means(rows, task)
        for level in plan["levels"]:
            for variant in [plan["method"], *plan["baselines"], *plan["context"]]:
                per = means.get((level, variant), {})
                cells = []
                for b in plan["builds"]:
                    vals = [v for (bb, _), v in per.items() if bb == b]
                    cells.append(f"{np.mean(vals):.1f} (n = {len(vals)})" if vals else "-")
                cells.append(f"{np.mean(list(per.values())):.1f} (n = {len(per)})" if per else "-")
                lines.append(f"| {task} | {level} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(records: list[dict], out_dir: Path) -> Path:
    """Paired differences per unit and their mean with its 95 % t interval, one panel per task x level."""
    cells = sorted({(r["task"], r["level"]) for r in records})
    fig = Figure(figsize=(4.2 * len(cells), 3.8), layout="constrained")
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    for ax, (task, level) in zip(axes, cells):
        mine = [r for r in records if (r["task"], r["level"]) == (task, level)]
        for x, r in enumerate(mine):
            ax.scatter([x] * r["n"], r["diffs"], s=14, color="0.55", zorder=2, label="one (build, seed)" if x == 0 else None)
            if r["n"] >= 2:
                ax.errorbar([x], [r["mean"]], yerr=[[r["mean"] - r["ci"][0]], [r["ci"][1] - r["mean"]]], fmt="o",
                            color="C0", capsize=4, zorder=3, label="mean, 95 % t interval" if x == 0 else None)
            ax.plot([x - 0.3, x + 0.3], [r["goal"]] * 2, color="C3", lw=1, ls="--", label="issue goal" if x == 0 else None)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(mine)), [r["baseline"] for r in mine], rotation=20)
        status = "" if mine and mine[0]["complete"] else " (interim)"
        ax.set_title(f"{task}, {level}{status}")
        ax.set_ylabel("drsf minus baseline, target mean (points)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Pre-registered confirmation: paired differences on fresh builds")
    path = out_dir / "sdg_confirm.png"
    fig.savefig(path, dpi=120)
    return path


def run_confirm(plan_path: str | None = None, runs_root: str | None = None, results: str | None = None,
                command: str = "", earlier: str | None = None) -> Path:
    """Collect, test and write ``sdg_confirm.json``, ``sdg_confirm.md`` and ``sdg_confirm.png``; returns the report.

    ``earlier``: a previous ``sdg_confirm.json`` whose rows stand in for builds whose run folders are gone
    (``with_earlier_rows``); each build's source is recorded in the file and printed in the report.
    """
    plan = load_plan(plan_path)
    root = Path(runs_root) if runs_root else project_root()
    out = Path(results) if results else project_root() / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(plan, root)
    commit = trained_commit(root)
    if earlier:
        rows, sources = with_earlier_rows(plan, rows, earlier, commit)
    else:
        sources = [{"task": t, "build": b, "runs": runs_of(rows, t, b), "source": "runs" if runs_of(rows, t, b) else "none"}
                   for t in plan["tasks"] for b in plan["builds"]]
    records = contrasts(plan, rows)
    atomic_write_json(out / ROWS_FILE, {"preregistration": "docs/preregistration.md", "trained_at": commit,
                                        "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "sources": sources, "contrasts": records, "rows": rows})
    atomic_write_text(out / "sdg_confirm.md", report_text(plan, rows, records, commit, sources))
    figure(records, out)
    return out / "sdg_confirm.md"
