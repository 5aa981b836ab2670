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
checkpoint. The report (tables, figure) is ``drsf_kit.workflows.report``'s. Usage::

    drsf protocol --task det [--jobs 2] [--variants source_only,naive_synth]
        [--seeds 0,1,2,3,4] [--fidelity clean,ldm,ldm_gap] [--report-only] [--prepare-only]

A protocol YAML of your own (``--config``) writes its report to ``<output_dir>/report/`` unless
``--results DIR`` says otherwise, so a variation never overwrites the committed results.

Ablations are *arms*: a named variant with hyperparameter overrides, declared in the protocol section
(``arms: {mdsf_no_align: {variant: mdsf, hparams: {eta_max: 0.0}}}``) and listed under ``variants`` like
any variant. An arm's runs are named after it, paired by seed with every other run, and compared with
the variant it modifies as well as with the usual baselines (``configs/protocol/det_ablation.yaml``);
``compare_with: [name, ...]`` adds baselines every variant is compared with. ``method: v2`` sets the DRSF
design of every variant with blocks that names none (protocol v2's configs: their rows were trained
before v3 became the kit's default).

``--jobs 2`` trains two runs side by side with one torch thread each (on 2 cores a mini source_only
step takes 0.18 s with one thread and 0.14 s with two: small convolutions do not split well).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from drsf_kit.config import RunConfig, config_from_dict
from drsf_kit.data.mini_weather import holdout_split, make_mini_weather
from drsf_kit.errors import ConfigError
from drsf_kit.models import get_variant
from drsf_kit.models.hparams import pin_method
from drsf_kit.synth.base import SynthConfig
from drsf_kit.synth.fidelity import check_gap, parse_level
from drsf_kit.synth.runner import run_synth
from drsf_kit.train.engine import fit
from drsf_kit.train.evaluate import load_run
from drsf_kit.train.pretrain import PretrainConfig, load_key, pretrain, weights_path
from drsf_kit.train.rundir import RunDir
from drsf_kit.train.selection import validate_model
from drsf_kit.utils.io import atomic_write_json, atomic_write_text
from drsf_kit.workflows import report as protocol_report
from drsf_kit.workflows.runs import project_root

RESULTS = "benchmarks/results"  # the committed report of the kit's own protocol configs (project-relative)


def load_protocol(task: str, path: str | None = None) -> tuple[dict, dict]:
    """(protocol section, run section) of ``configs/protocol/<task>.yaml``.

    ``extends: <file>`` (relative to the config) starts from that protocol: the keys this file's
    ``protocol`` section gives replace the base's, except ``arms``, which add to the base's by name;
    its ``run`` section, when present, replaces the base's, and an inherited ``run`` section reads the
    (possibly new) ``data_root``.
    """
    path = Path(path or project_root() / "configs" / "protocol" / f"{task}.yaml")
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
    spec = (proto.get("levels") or {}).get(level)
    if spec is None:
        return parse_level(level)
    if not isinstance(spec, dict) or set(spec) - {"fidelity", "appearance_gap"}:
        raise ConfigError(f"protocol level {level!r} must be a mapping with 'fidelity' and/or 'appearance_gap', got {spec!r}")
    strength, gap = parse_level(spec.get("fidelity", 0.0))
    return strength, check_gap(spec["appearance_gap"]) if "appearance_gap" in spec else gap


def prepare(task: str, proto: dict, run: dict, levels: list[str], progress: bool = True) -> Path:
    """Build the data, the val split, the twins of every level and the warm start; returns the weights file."""
    root = proto["data_root"]
    make_mini_weather(root, progress=progress, **proto["build"])
    holdout_split(root, int(proto["n_val"]), run["data"]["source_domain"])
    for level in levels:
        run_synth(synth_config(proto, run, level, progress))
    return pretrain(pretrain_config(task, proto, run), progress=progress)


def synth_config(proto: dict, run: dict, level: str, progress: bool = True) -> SynthConfig:
    """The twins of ``level``: every source train image in every pseudo-domain, from the protocol's
    ``synth_seed`` (default 0; a new build of a confirmation draws its own twins)."""
    strength, gap = level_profile(proto, level)
    return SynthConfig(data=proto["data_root"], out=str(Path(proto["synth_out"]) / level),
                       source=run["data"]["source_domain"], domains=tuple(run["data"]["synth_domains"]), split="train",
                       fidelity=strength, appearance_gap=gap, seed=int(proto.get("synth_seed", 0)), progress=progress)


def pretrain_config(task: str, proto: dict, run: dict) -> PretrainConfig:
    """The warm start's PretrainConfig: the protocol's ``pretrain`` section on the source ``fit`` split."""
    return PretrainConfig(task=task, data_root=proto["data_root"], source_domain=run["data"]["source_domain"],
                          split=run["data"]["source_split"], **proto["pretrain"])


def arm(proto: dict, name: str) -> tuple[str, dict]:
    """(kit variant, hparam overrides) of a protocol entry: an arm of ``proto["arms"]`` or a plain variant."""
    spec = (proto.get("arms") or {}).get(name)
    if spec is None:
        return name, {}
    if not isinstance(spec, dict) or "variant" not in spec or set(spec) - {"variant", "hparams"}:
        raise ConfigError(f"protocol arm {name!r} must be a mapping with 'variant' and optional 'hparams', got {spec!r}")
    return spec["variant"], dict(spec.get("hparams") or {})


def parents(proto: dict) -> dict[str, str]:
    """{arm name: the kit variant it modifies} for every arm of the protocol."""
    return {name: arm(proto, name)[0] for name in (proto.get("arms") or {})}


def jobs_of(proto: dict, variants: list[str] | None, levels: list[str], seeds: list[int]) -> list[dict]:
    """One job per run: ``source_only`` (no twins) once per seed, serving every level; others per level."""
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


def run_config(task: str, proto: dict, run: dict, job: dict, weights: Path) -> RunConfig:
    """The RunConfig of one job."""
    values = copy.deepcopy(run)
    level = job["serves"][0]
    variant, overrides = arm(proto, job["variant"])
    if proto.get("method"):  # the DRSF design of the protocol's blocks; an arm's own method wins
        overrides = pin_method(variant, overrides, proto["method"])
    values.update(variant=variant, seed=job["seed"], output_dir=proto["output_dir"],
                  run_name=f"{task}-{job['level']}-{job['variant']}-s{job['seed']}")
    if overrides:
        values.setdefault("model", {})["hparams"] = {**(values["model"].get("hparams") or {}), **overrides}
    values["data"]["synth_root"] = str(synth_root(proto, level))
    values["model"][load_key(pretrain_config(task, proto, run))] = str(weights)
    return config_from_dict(values)


def run_job(task: str, proto: dict, run: dict, job: dict, weights: Path) -> dict:
    """Train/evaluate (or skip) one job, then its training-domain validation per level it serves."""
    cfg = run_config(task, proto, run, job, weights)
    run_dir = RunDir(cfg.run_dir)
    todo = [lv for lv in job["serves"] if not run_dir.validation_path(lv).is_file()]
    if run_dir.is_finished() and not todo:
        return {"run": cfg.name, "skipped": True}
    t0 = time.perf_counter()
    fit(cfg, resume=True, start_over=True, progress=False)  # a new run starts; a stopped one continues
    t_fit = time.perf_counter() - t0
    model, _ = load_run(run_dir.path)
    for level in todo:
        lcfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synth_root=str(synth_root(proto, level))))
        rows = validate_model(model, lcfg, max_images=int(proto.get("val_images", 0)))
        atomic_write_json(run_dir.validation_path(level), {"level": level, "rows": rows})
    timing = {"fit_and_test_s": round(t_fit, 1), "validation_s": round(time.perf_counter() - t0 - t_fit, 1)}
    atomic_write_json(run_dir.protocol_time_path, timing)
    return {"run": cfg.name, "skipped": False, **timing}


def job_finished(task: str, proto: dict, run: dict, job: dict, weights: Path) -> bool:
    """True when the job's run is done and validated on every level it serves."""
    run_dir = RunDir(run_config(task, proto, run, job, weights).run_dir)
    return run_dir.is_finished() and all(run_dir.validation_path(lv).is_file() for lv in job["serves"])


# ------------------------------------------------------------------------------------------- the whole protocol
def results_dir(proto: dict, config: str | None = None, results: str | None = None) -> Path:
    """Where the report goes: ``results``; else, for a protocol YAML of one's own (``config``),
    ``<output_dir>/report`` (a variation never overwrites the committed results); else ``benchmarks/results``."""
    if results:
        return Path(results)
    if config:
        return Path(proto["output_dir"]) / "report"
    return project_root() / RESULTS


def _run_sharded(task: str, proto: dict, run: dict, todo: list[dict], weights: Path, n: int, threads: int,
                 child_args: list[str]) -> int:
    """``jobs=N``: N child processes (``drsf protocol ... --shard k/N``), child k running jobs k, k+N, ...
    with ``threads // N`` torch threads each; a progress bar over runs while they work. Returns the
    number of children that failed (their logs are named)."""
    log_dir = Path(proto["output_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, threads // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    children = []
    for k in range(n):
        log = log_dir / f"shard_{k}of{n}.log"
        command = [sys.executable, "-m", "drsf_kit", "protocol", *child_args, "--threads", str(threads),
                   "--skip-prepare", "--shard", f"{k}/{n}"]
        with open(log, "a", encoding="utf-8") as fh:
            children.append((subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                              cwd=os.getcwd()), log))
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


def run_protocol(task: str, config: str | None = None, variants: list[str] | None = None,
                 seeds: list[int] | None = None, levels: list[str] | None = None, threads: int = 2, jobs: int = 1,
                 shard: str | None = None, skip_prepare: bool = False, prepare_only: bool = False,
                 report_only: bool = False, results: str | None = None, command: str = "") -> int:
    """Prepare, run the pending jobs with a progress bar, then write the rows, tables and figure.

    Args:
        task: ``det`` or ``seg``; config: a protocol YAML (default ``configs/protocol/<task>.yaml``).
        variants, seeds, levels: what to run (default: the config's per-level variants, seeds, levels).
        threads: torch threads in all; jobs: runs trained side by side, each with ``threads // jobs``.
        shard: ``k/N``: run only jobs k, k+N, ... (a ``jobs`` child) and write no report.
        skip_prepare: the data, twins and warm start exist (a ``jobs`` child; ``report_only`` too).
        prepare_only: build data, twins and warm start, print the weights file, stop.
        report_only: collect the finished runs and write the report only.
        results: the report folder (``results_dir``); command: the command line recorded in the rows file.
    Returns:
        The exit code: 1 when a ``jobs`` child failed, else 0.
    """
    torch.set_num_threads(threads)
    proto, run = load_protocol(task, config)
    out = results_dir(proto, config, results)
    out.mkdir(parents=True, exist_ok=True)
    levels = list(levels) if levels else list(proto["variants"])
    seeds = list(seeds) if seeds else list(proto["seeds"])
    if report_only or skip_prepare:
        weights = weights_path(pretrain_config(task, proto, run))
    else:
        weights = prepare(task, proto, run, levels)
    if prepare_only:
        print(weights)
        return 0
    todo = jobs_of(proto, variants, levels, seeds)
    failed = 0
    if shard:
        k, n = (int(x) for x in shard.split("/"))
        for job in todo[k::n]:
            print(json.dumps(run_job(task, proto, run, job, weights)), flush=True)
        return 0
    if not report_only and jobs > 1:
        child_args = ["--task", task, "--fidelity", ",".join(levels)]
        for flag, value in (("config", config), ("variants", ",".join(variants or [])),
                            ("seeds", ",".join(map(str, seeds))), ("results", results)):
            if value:
                child_args += [f"--{flag}", str(value)]
        failed = _run_sharded(task, proto, run, todo, weights, jobs, threads, child_args)
    elif not report_only:
        for job in tqdm(todo, desc=f"protocol {task}", unit="run"):
            info = run_job(task, proto, run, job, weights)
            tqdm.write(json.dumps(info))
    # every finished run of the config (not only this invocation's), so partial invocations add up
    everything = jobs_of(proto, None, list(proto["variants"]), list(proto["seeds"]))
    extra = [j for j in todo if (j["level"], j["variant"], j["seed"]) not in
             {(e["level"], e["variant"], e["seed"]) for e in everything}]
    runs = [(job, run_config(task, proto, run, job, weights)) for job in everything + extra]
    rows = protocol_report.collect_rows(task, runs)
    commands = protocol_report.write_rows(out, task, rows, command, collect_only=report_only)
    footer = (f"\nTraining command recorded: `{commands[task]}` (runs of other variants or levels may come "
              "from other invocations; docs/protocol.md section 6 lists every command)\n")
    if f"{task}_collected" in commands:
        footer += f"Collected: `{commands[task + '_collected']}`\n"
    text = protocol_report.report(task, rows, parents(proto), tuple(proto.get("compare_with") or ()),
                                  figure_dir=out, n_target=proto.get("build", {}).get("n_target"))
    atomic_write_text(out / f"sdg_protocol_{task}.md", text + footer)
    print(out / f"sdg_protocol_{task}.md")
    return 1 if failed else 0
