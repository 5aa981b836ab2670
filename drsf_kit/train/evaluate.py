"""Scoring a model or a finished run: per-domain metrics, tidy result rows, tables, and ``load_run``.

Detection runs are scored with VOC2007 11-point mAP@0.5, COCO-style AP and calibration error;
segmentation runs with mIoU and pixel accuracy. The source domain is scored on its ``test`` split and
every target on the split its protocol names (``drsf_kit.data.dwd.PROTOCOLS``). Rows follow
CONTRIBUTING.md and are appended to ``<run>/results.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from drsf_kit.config import RunConfig, check_splits, config_from_dict, with_overrides
from drsf_kit.data.classes import CITYSCAPES_CLASSES, DWD_CLASSES
from drsf_kit.data.dwd import PROTOCOLS, split_for
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.detection import evaluate_detections
from drsf_kit.evaluation.results import HEADLINE_METRIC, detection_rows, load_results, segmentation_rows
from drsf_kit.evaluation.segmentation import SegmentationMeter
from drsf_kit.evaluation.tables import write_tables
from drsf_kit.train.builders import build_model_for
from drsf_kit.train.checkpoint import load_checkpoint, unwrap_model
from drsf_kit.train.data import source_dataset
from drsf_kit.train.dist_eval import gather_in_order, shard_batches, sum_confusion
from drsf_kit.train.distributed import is_main_process
from drsf_kit.train.precision import autocast, resolve_amp_dtype
from drsf_kit.train.rundir import CONFIG, LAST, RESULTS, RunDir  # noqa: F401  (names kept for importers)
from drsf_kit.utils.runtime import resolve_device

SUMMARY_METRIC = HEADLINE_METRIC  # defined once, in evaluation/results.py
TABLE_METRICS = {"det": ("map50_voc07", "ap50_coco"), "seg": ("miou",)}


def eval_split(cfg: RunConfig, domain: str, protocol: str) -> str:
    """The split of ``domain`` that is scored: the source's ``test``, a target's per ``protocol``."""
    if domain == "cityscapes":
        return "val"
    if domain == cfg.data.source_domain:
        return "test"

    return split_for(domain, protocol)


def _list_collate(items):
    return items


def _loader(dataset, cfg: RunConfig, max_images: int) -> DataLoader:
    if max_images and len(dataset) > max_images:
        dataset = Subset(dataset, range(max_images))  # the first N, so repeated looks score the same images
    # under torchrun this process's share of the single-process batches (all of them alone);
    # an own generator: scoring in the middle of a run must not draw from the training RNG
    return DataLoader(dataset, batch_sampler=shard_batches(len(dataset), cfg.eval.batch_size),
                      num_workers=cfg.data.num_workers, collate_fn=_list_collate, generator=torch.Generator())


def _dataset_ids(dataset) -> list[str]:
    if isinstance(dataset, Subset):
        return [dataset.dataset.ids[i] for i in dataset.indices]
    return list(dataset.ids)


@torch.no_grad()
def score_detection(model, loader: DataLoader, device, desc: str = "eval", progress: bool = True,
                    score_threshold: float = 0.0, amp_dtype: torch.dtype | None = None) -> dict | None:
    """Run a detector over ``loader`` and return ``evaluate_detections`` (VOC07, COCO, ECE).

    Under torchrun every process runs its share of the batches and rank 0 scores them all (the other
    processes return None); ``amp_dtype`` is the autocast dtype (None: fp32).
    """
    ids = _dataset_ids(loader.dataset)
    local = []
    for index, batch in tqdm(zip(loader.batch_sampler, loader), total=len(loader), desc=desc, disable=not progress,
                             leave=False):
        images = [im.to(device, non_blocking=True) for im, _ in batch]
        with autocast(device, amp_dtype):
            outputs = model(images)
        for i, (_, target), out in zip(index, batch, outputs):
            image_id = str(target.get("image_id", ids[i])) if isinstance(target, dict) else ids[i]
            keep = out["scores"] >= score_threshold
            pred = {k: out[k][keep].float().cpu() for k in ("boxes", "scores", "labels")}
            local.append((i, (image_id, pred, {k: target[k] for k in ("boxes", "labels", "difficult") if k in target})))
    merged = gather_in_order(local)
    if merged is None:
        return None
    preds = {image_id: pred for image_id, pred, _ in merged}
    targets = {image_id: target for image_id, _, target in merged}
    return evaluate_detections(preds, targets, DWD_CLASSES, metrics=("voc07", "coco", "ece"))


@torch.no_grad()
def score_segmentation(model, loader: DataLoader, device, desc: str = "eval", progress: bool = True,
                       amp_dtype: torch.dtype | None = None) -> dict | None:
    """Run a segmenter over ``loader`` and return ``SegmentationMeter.compute()`` (mIoU, pixel accuracy).

    The argmax runs on the device (only labels travel to the CPU, not full-resolution logits); under
    torchrun the processes' confusion matrices are summed and rank 0 returns the result (others None).
    """
    meter = SegmentationMeter(class_names=CITYSCAPES_CLASSES)
    ids = _dataset_ids(loader.dataset)
    for index, batch in tqdm(zip(loader.batch_sampler, loader), total=len(loader), desc=desc, disable=not progress,
                             leave=False):
        names = [ids[i] for i in index]
        same = len({tuple(im.shape) for im, _ in batch}) == 1
        groups = [batch] if same else [[item] for item in batch]  # stack only images of one size
        start = 0
        for group in groups:
            images = torch.stack([im for im, _ in group]).to(device, non_blocking=True)
            masks = torch.stack([m for _, m in group])
            with autocast(device, amp_dtype):
                labels = model(images).argmax(dim=1)
            meter.update(labels.cpu(), masks, image_ids=names[start : start + len(group)])
            start += len(group)
    sum_confusion(meter)
    return meter.compute() if is_main_process() else None


def evaluate_model(model, cfg: RunConfig, domains: Sequence[str] | None = None, protocol: str | None = None,
                   device=None, step: int | None = None, progress: bool = True,
                   max_images: int | None = None) -> tuple[list[dict], dict]:
    """Score ``model`` on ``domains`` (default: source test + targets) and build tidy result rows.

    Returns:
        ``(rows, summary)``: the CONTRIBUTING.md rows of every domain, and ``{domain: {metric: value}}``
        with the summary metrics (for logs and TensorBoard). Under torchrun every process must call it
        (each scores its share, ``drsf_kit.train.dist_eval``); rank 0 gets the rows, the others ``([], {})``.
    """
    domains = tuple(domains or cfg.eval_domains())
    protocol = protocol or cfg.eval_protocol()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    max_images = cfg.eval.max_images if max_images is None else max_images

    device = torch.device(device) if device is not None else next(unwrap_model(model).parameters()).device
    amp_dtype = resolve_amp_dtype(cfg.train.amp, cfg.train.amp_dtype, device)
    was_training = model.training
    model.eval()
    rows, summary = [], {}
    try:
        for domain in domains:
            split = eval_split(cfg, domain, protocol)
            dataset = source_dataset(cfg, domain, split)
            if len(dataset) == 0:
                raise DataError(cfg.data.target_roots.get(domain, cfg.data.root), f"domain {domain!r} split {split!r} has no images")
            loader = _loader(dataset, cfg, max_images)
            desc = f"eval {domain}/{split}"
            common = dict(variant=cfg.variant, seed=cfg.seed, domain=domain, split=split, protocol=protocol,
                          step=step, run=cfg.name)
            if cfg.task == "det":
                result = score_detection(model, loader, device, desc, progress, cfg.eval.score_threshold, amp_dtype)
                if result is None:  # torchrun: rank 0 holds the gathered result
                    continue
                rows += detection_rows(result, task="det", **common)
                summary[domain] = {m: result.get(m) for m in ("map50_voc07", "ap50_coco", "ece")}
            else:
                result = score_segmentation(model, loader, device, desc, progress, amp_dtype)
                if result is None:
                    continue
                rows += segmentation_rows(result, task="seg", **common)
                summary[domain] = {m: result.get(m) for m in ("miou", "pixel_acc")}
    finally:
        model.train(was_training)
    return rows, summary


def format_summary(summary: dict, task: str) -> str:
    """One line per domain with the headline metric in percent."""
    metric = SUMMARY_METRIC[task]
    return "\n".join(f"  {domain:>14s}  {metric} {100 * (vals.get(metric) or float('nan')):5.1f}%"
                     for domain, vals in summary.items())


def write_run_tables(run_dir: str | Path, task: str, protocol: str, source: str | None = None) -> list[Path]:
    """Write the per-domain and per-class tables of a run's ``results.jsonl`` for one protocol."""
    run_dir = Path(run_dir)
    df = load_results(run_dir / RESULTS)
    df = df[df["protocol"] == protocol]  # tables refuse to mix protocols; one set of files per protocol
    if df.empty:
        return []
    domains = list(dict.fromkeys(df["domain"]))
    source = source if source in domains else None
    targets = [d for d in domains if d != source]
    written = []
    for metric in TABLE_METRICS[task]:
        paths = write_tables(df, run_dir, metric, name=f"{metric}_{protocol}", task=task, source=source,
                             targets=targets)
        written += list(paths.values())
    return written


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The ``RunConfig`` saved in ``<run_dir>/config.json``."""
    run = RunDir(run_dir)
    values = run.read_config()
    if values is None:
        raise DataError(run.config_path, "not a run folder: config.json is missing")
    return config_from_dict(values)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str = LAST):
    """Rebuild a trained run's model from its folder, in eval mode.

    Returns:
        ``(model, cfg)``: the model with the weights of ``checkpoints/<checkpoint>`` and the run config.
    """
    run = RunDir(run_dir)
    cfg = read_run_config(run.path)
    ckpt = load_checkpoint(run.checkpoints / checkpoint, map_location="cpu")
    model = build_model_for(cfg, load_pretrained=False)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    model.trained_steps = int(ckpt["step"])
    return model, cfg


def evaluate_run(run_dir: str | Path, domains: Iterable[str] | None = None, protocol: str | None = None,
                 device: str = "auto", progress: bool = True, max_images: int | None = None,
                 write: bool = True) -> list[dict]:
    """Score a trained run, append the rows to ``<run>/results.jsonl`` and write its tables.

    Args:
        run_dir: the run folder (``config.json`` + ``checkpoints/last.pt``).
        domains: domains to score (default: the run's eval domains: source test + targets).
        protocol: ``all_images`` or ``drsf_code`` (default: the run's).
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show progress bars.
        max_images: cap per domain (default: the run's ``eval.max_images``). Another cap than the run's
            is a quick look: its rows carry ``max_images`` and go to ``results_capped.jsonl``, so they
            never replace the run's own evaluation in ``results.jsonl`` (nor enter its tables).
        write: append rows and write tables (False only returns the rows).

    Returns:
        The tidy rows.
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ConfigError(f"max_images must be 0 (every image) or a positive count, got {max_images!r}")
    cfg = read_run_config(run_dir)  # before the model is built: a bad folder or domain costs nothing
    protocol = protocol or cfg.eval_protocol()
    if domains:
        check_splits(with_overrides(cfg, [f"eval.domains={list(domains)}", f"eval.protocol={protocol}"]))
    dev = resolve_device(device)
    model, cfg = load_run(run_dir, dev)
    rows, summary = evaluate_model(model, cfg, list(domains) if domains else None, protocol, dev,
                                   step=model.trained_steps, progress=progress, max_images=max_images)
    capped = max_images is not None and max_images != cfg.eval.max_images
    if capped:  # a quick look on fewer images: its own rows, never in place of the run's evaluation
        rows = [{**row, "max_images": max_images} for row in rows]
    if write:
        run = RunDir(run_dir)
        with run.lock():  # not while a training process writes into the folder
            if capped:
                run.write_results(rows, capped=True)  # keyed by their cap in results_capped.jsonl
            else:
                run.write_results(rows)  # keyed: scoring the same step again replaces its rows
                write_run_tables(run_dir, cfg.task, protocol, cfg.data.source_domain)
    return rows
