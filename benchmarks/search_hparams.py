"""Random search of DRSF hyperparameters, scored on held-out source and pseudo-domain images only.

Selection never looks at a target domain: the last ``--val-frac`` of the source training images are held
out with their generated twins (every pseudo-domain), the model trains on the rest, and a trial's score
is the mean of the task metric (detection: VOC07 mAP@0.5; segmentation: mIoU) over the held-out source
images and over each pseudo-domain's twins of them. Each trial draws the keys of one block (``--block
dfdr``, ``mdsf`` or ``all``) from ``drsf_kit.models.hparams.HPARAM_RANGES``; the other keys keep their
defaults.

Every (trial, validation domain) is one tidy row in ``--out`` (JSON lines): task, variant, block, trial,
seed, steps, the drawn hparams (as JSON), the domain (``source`` or ``pseudo:<name>``), metric and
value; plus one row per trial with domain ``mean``.

Usage::

    python benchmarks/search_hparams.py --task det --variant drsf --block mdsf --trials 8 --steps 300 \\
        data.root=data/mini-weather data.synth_root=data/synth/procedural

A full search is long (trials x steps); ``--steps 2 --trials 2`` checks the plumbing.

``--protocol`` runs the search inside protocol v2 instead (``configs/protocol/<task>.yaml``, or
``--protocol-config``): each trial is a protocol run of ``--variant`` at the ``ldm`` level and
``--seed``, fine-tuned from the protocol's warm start on the source ``fit`` images and their twins,
and scored by the protocol's training-domain validation (source ``val`` images and their twins; no
target image is read). Trial ``default`` (the current defaults) comes first. The runs live in
``<output_dir>_search/`` and are skipped when finished (resumable); ``--jobs N`` trains N side by side.
The rows of every finished trial are rewritten to ``--out`` (default
``benchmarks/results/hparam_search_<task>_protocol.jsonl``) with a Markdown table beside it::

    python benchmarks/search_hparams.py --protocol --task det --variant drsf --block dfdr --trials 4 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from drsf_kit.config import load_config
from drsf_kit.data.classes import DWD_CLASSES
from drsf_kit.models.dfdr import DFDRHparams
from drsf_kit.models.hparams import hparam_keys, random_hparams
from drsf_kit.models.mdsf import MDSFHparams
from drsf_kit.data.twins import TwinCollate, TwinItem
from drsf_kit.train.data import build_train_set
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.train.engine import build_model_for, build_optimizer, build_scheduler, train_step
from drsf_kit.utils.io import append_jsonl

ROOT = Path(__file__).resolve().parents[1]
BLOCK_KEYS = {"dfdr": DFDRHparams.field_names(), "mdsf": MDSFHparams.field_names()}
CENTRE = (0.5, 0.5, 0.5)  # validation images: the centre crop (no crop at full scale), no flip


def block_keys(variant: str, block: str) -> list[str]:
    """The hparam keys a trial draws: those of ``block`` that ``variant`` uses (never ``method``)."""
    keys = [k for k in hparam_keys(variant) if k != "method"]
    if block != "all":
        keys = [k for k in keys if k in BLOCK_KEYS[block]]
    return keys


def split_sources(n: int, val_frac: float) -> tuple[int, int]:
    """(train, validation) counts: the last ``val_frac`` of the source images (at least one) are held out."""
    n_val = max(1, int(round(n * val_frac)))
    if n_val >= n:
        raise SystemExit(f"--val-frac {val_frac} leaves no training image out of {n}")
    return n - n_val, n_val


def validation_sets(train_set, first: int, domain_names: dict[int, str]) -> dict[str, list]:
    """Held-out (image, target) lists: ``source`` and one per pseudo-domain (the twins of the same images)."""
    sets: dict[str, list] = {"source": []}
    for s in range(first, len(train_set.twin_table)):
        out = train_set[TwinItem(s, -1, 0, False, CENTRE)]
        sets["source"].append((train_set.source.ids[s], *out["source"]))
        for d, copies in sorted(train_set.twin_table[s].items()):
            twin = train_set[TwinItem(s, copies[0], d, False, CENTRE)]["twin"]
            # "pseudo:" keeps generated twins apart from the real target domain of the same name
            sets.setdefault(f"pseudo:{domain_names[d]}", []).append((train_set.source.ids[s], *twin))
    return sets


@torch.no_grad()
def score(model, task: str, items: list) -> float:
    """mAP@0.5 (VOC07) or mIoU of ``model`` on ``(id, image, target)`` items."""
    from drsf_kit.evaluation.detection import evaluate_detections
    from drsf_kit.evaluation.segmentation import evaluate_segmentation

    model.eval()
    if task == "det":
        preds, targets = {}, {}
        for image_id, image, target in items:
            preds[image_id] = model([image])[0]
            targets[image_id] = {k: target[k] for k in ("boxes", "labels", "difficult") if k in target}
        result = evaluate_detections(preds, targets, DWD_CLASSES, metrics=("voc07",))
        return float(result["map50_voc07"])
    pairs = [(model(image[None]).argmax(1), target[None].long()) for _, image, target in items]
    return float(evaluate_segmentation(pairs, progress=False)["miou"])


def run_trial(cfg, train_set, n_train: int, hp: dict, steps: int, seed: int):
    """Train a fresh model on the first ``n_train`` source images for ``steps`` steps; return it."""
    cfg = dataclasses.replace(cfg, seed=seed, model=dataclasses.replace(cfg.model, hparams=dict(hp)))
    torch.manual_seed(seed)
    model = build_model_for(cfg)
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    sampler = TwinBatchSampler(train_set.twin_table[:n_train], cfg.train.batch_source, seed,
                               twins_per_source=getattr(model, "twins_per_source", 1), hflip=cfg.train.hflip)
    collate = TwinCollate(cfg.task)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for b in range(steps):
        batch = collate([train_set[it] for it in sampler.batch(b)])
        train_step(model, batch, optimizer, torch.device("cpu"), step=b + 1, progress=b / max(1, steps),
                   scheduler=scheduler, generator=generator, grad_clip=cfg.train.grad_clip)
    return model


# ------------------------------------------------------------------------------------------- protocol mode
def _protocol_trial(work: tuple) -> dict:
    from drsf_kit.workflows import protocol

    task, proto, run, job, weights = work
    return protocol.run_job(task, proto, run, job, weights)


def protocol_trials(variant: str, task: str, block: str, first: int, trials: int, method: str) -> list[tuple[str, dict]]:
    """``[("default", defaults), ("<block>-t<k>", draw k), ...]``: the trials of a protocol search."""
    from drsf_kit.models.hparams import default_hparams

    keys = block_keys(variant, block)
    out = [("default", default_hparams(variant, task, method))]
    for k in range(first, first + trials):
        hp = random_hparams(variant, task, seed=k, keys=keys, method=method)
        if "method" in hp:
            hp["method"] = method
        out.append((f"{block}-t{k}", hp))
    return out


def protocol_search(args) -> int:
    """``--protocol``: trials as protocol runs, scored by training-domain validation; rows and table."""
    import copy

    from tqdm.auto import tqdm

    from drsf_kit.workflows import protocol
    from drsf_kit.train.rundir import RunDir
    from drsf_kit.train.selection import PRIMARY_METRIC, validation_score
    from drsf_kit.utils.io import atomic_write_text
    from drsf_kit.utils.runtime import imap_side_by_side

    proto, run = protocol.load_protocol(args.task, args.protocol_config)
    proto = {**proto, "output_dir": f"{proto['output_dir']}_search"}
    weights = protocol.prepare(args.task, proto, run, ["ldm"])  # made or found
    work, names = [], []
    for name, hp in protocol_trials(args.variant, args.task, args.block, args.first_trial, args.trials, args.method):
        trial_run = copy.deepcopy(run)
        trial_run["model"]["hparams"] = hp
        job = {"level": f"search_{name}", "variant": args.variant, "seed": args.seed, "serves": ["ldm"]}
        work.append((args.task, proto, trial_run, job, weights))
        names.append((name, hp))
    jobs = max(1, min(args.jobs, len(work)))
    bar = tqdm(total=len(work), desc=f"search {args.task} {args.block} ({jobs} at a time)", unit="trial")
    results = (map(_protocol_trial, work) if jobs == 1
               else imap_side_by_side(_protocol_trial, work, jobs, max(1, args.threads // jobs)))
    for info in results:
        tqdm.write(json.dumps(info))
        bar.update(1)
    bar.close()
    metric = PRIMARY_METRIC[args.task]
    command = "python benchmarks/search_hparams.py " + " ".join(sys.argv[1:])
    rows = []
    for (task, proto_, trial_run, job, _), (name, hp) in zip(work, names):
        cfg = protocol.run_config(task, proto_, trial_run, job, weights)
        val_file = RunDir(cfg.run_dir).validation_path("ldm")
        if not val_file.is_file():
            continue
        val_rows = json.loads(val_file.read_text())["rows"]
        base = {"task": task, "variant": args.variant, "block": "defaults" if name == "default" else args.block,
                "trial": name, "seed": args.seed, "fidelity": "ldm", "split": "val", "metric": metric,
                "hparams": json.dumps(hp, sort_keys=True), "run": cfg.name, "command": command}
        for r in val_rows:
            if r["metric"] == metric and r.get("class") is None:
                rows.append({**base, "domain": ("source" if r["role"] == "source" else f"pseudo:{r['domain']}"),
                             "value": r["value"]})
        mean = validation_score(val_rows, task)
        rows.append({**base, "domain": "mean", "value": mean})
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"hparam_search_{args.task}_protocol.jsonl")
    # the file holds every finished trial of every block run so far: rows of other blocks are kept
    kept = []
    if out.is_file():
        kept = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        ours = {r["run"] for r in rows}
        kept = [r for r in kept if r.get("run") not in ours]
    all_rows = kept + rows
    atomic_write_text(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows))
    means = sorted({(r["value"], r["trial"], r["block"], r["hparams"]) for r in all_rows if r["domain"] == "mean"},
                   reverse=True)
    lines = [f"# Hyperparameter search, {args.task}, variant {args.variant}, protocol v2 `ldm`, seed {args.seed}", "",
             "Score: training-domain validation mean of " + metric + " (source val images and their pseudo-domain "
             "twins, equally weighted); no target image was read.", "",
             "| trial | block | val mean | hparams that differ from the defaults |", "|---|---|---|---|"]
    defaults = dict(names[0][1])
    for value, trial, blk, hp_json in means:
        hp = json.loads(hp_json)
        diff = ", ".join(f"{k}={_short(v)}" for k, v in sorted(hp.items()) if v != defaults.get(k)) or "(defaults)"
        lines.append(f"| {trial} | {blk} | {100 * value:.1f} | {diff} |")
    # every block's command, in the order the blocks were searched (rows of older files carry none)
    commands = list(dict.fromkeys(r.get("command") or "" for r in all_rows if r["block"] != "defaults"))
    lines += [""] + [f"Command: `{c}`" for c in commands if c] + [""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the trials, append the rows; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="det", choices=["det", "seg"])
    parser.add_argument("--variant", default="drsf")
    parser.add_argument("--block", default="all", choices=["dfdr", "mdsf", "all"])
    parser.add_argument("--method", default="v2", choices=["v2", "v1"])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--first-trial", type=int, default=0, help="trial index to start from (resume)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    parser.add_argument("--val-frac", type=float, default=0.2)
    parser.add_argument("--out", default=None,
                        help="rows (default benchmarks/results/hparam_search.jsonl; --protocol: hparam_search_<task>_protocol.jsonl)")
    parser.add_argument("--protocol", action="store_true", help="trials as protocol v2 runs (see above)")
    parser.add_argument("--protocol-config", default=None, help="protocol YAML (default configs/protocol/<task>.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="--protocol: trials trained side by side")
    parser.add_argument("--threads", type=int, default=2, help="--protocol: torch threads in all")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH")
    args = parser.parse_args(argv)
    if args.protocol:
        if args.overrides:
            parser.error("--protocol takes its settings from the protocol YAML, not from overrides")
        return protocol_search(args)
    cfg = load_config(ROOT / "configs" / f"mini_{args.task}.yaml", [f"variant={args.variant}", *args.overrides])
    train_set = build_train_set(cfg)
    n_train, _ = split_sources(len(train_set.twin_table), args.val_frac)
    names = {i + 1: name for i, name in enumerate(cfg.data.synth_domains)}
    val = validation_sets(train_set, n_train, names)
    keys = block_keys(args.variant, args.block)
    metric = "map50_voc07" if args.task == "det" else "miou"
    for trial in range(args.first_trial, args.first_trial + args.trials):
        hp = random_hparams(args.variant, args.task, seed=trial, keys=keys, method=args.method)
        if "method" in hp:
            hp["method"] = args.method
        t0 = time.perf_counter()
        model = run_trial(cfg, train_set, n_train, hp, args.steps, args.seed)
        values = {name: score(model, args.task, items) for name, items in val.items()}
        finite = [v for v in values.values() if math.isfinite(v)]
        values["mean"] = statistics.mean(finite) if finite else float("nan")
        base = {"task": args.task, "variant": args.variant, "block": args.block, "trial": trial, "seed": args.seed,
                "steps": args.steps, "hparams": json.dumps(hp, sort_keys=True), "metric": metric,
                "train_images": n_train, "val_images": len(val["source"]),
                "seconds": round(time.perf_counter() - t0, 2)}
        for name, value in values.items():
            append_jsonl(args.out or ROOT / "benchmarks" / "results" / "hparam_search.jsonl",
                         {**base, "domain": name, "value": value if math.isfinite(value) else None})
        print(f"trial {trial}: {metric} mean {values['mean']:.4f} ({', '.join(f'{k} {v:.3f}' for k, v in values.items())})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
