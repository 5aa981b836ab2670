"""Running a generator over a source domain: resume, manifests, sharding, filtering and progress.

Output: ``<out>/<backend>/<domain>/<source_id>[_<k>].jpg`` plus ``manifest.jsonl`` in that folder
(``manifest.part-<I>-of-<N>.jsonl`` for shard I of N). Each image is written atomically *before* its
manifest line is appended, so a killed run leaves at most images without rows (redone on resume,
with identical results) and never a row without its image. On start, rows whose image is gone and a
truncated last line are dropped (the manifest is rewritten atomically), so resuming never
duplicates a row.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np

from drsf_kit.data import voc
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.manifest import MANIFEST_NAME, append_manifest_row, row_key, validate_row
from drsf_kit.utils.lock import RunLock
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.synth.base import SourceItem, SynthConfig, item_seed, output_name
from drsf_kit.synth.consistency import layout_consistency
from drsf_kit.synth.registry import GENERATORS, build_generator
from drsf_kit.utils.io import atomic_save_image, atomic_write_json, read_jsonl, write_jsonl

PART_PATTERN = re.compile(r"^manifest\.part-(\d+)-of-(\d+)\.jsonl$")
# Which shards a folder's manifest.jsonl already holds (their parts are deleted after merging).
SHARDS_RECORD = "shards.json"


def part_name(shard: tuple[int, int] | None) -> str:
    """Manifest file name of a shard (``manifest.jsonl`` when unsharded)."""
    return MANIFEST_NAME if shard is None else f"manifest.part-{shard[0]}-of-{shard[1]}.jsonl"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def validate_config(cfg: SynthConfig) -> None:
    """Reject bad settings before any data or weights are loaded."""
    if cfg.backend not in GENERATORS:
        raise ConfigError(f"unknown synth backend {cfg.backend!r}; valid backends: {', '.join(GENERATORS)}")
    if not cfg.domains or len(set(cfg.domains)) != len(cfg.domains):
        raise ConfigError(f"--domains must list distinct domains, got {list(cfg.domains)}")
    for name, value, low in (("--per-image", cfg.per_image, 1), ("--batch-size", cfg.batch_size, 1),
                             ("--limit", cfg.limit if cfg.limit is not None else 1, 1), ("--size", cfg.size, 0),
                             ("--max-boxes", cfg.max_boxes, 0)):
        if int(value) < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if not 0.0 <= cfg.min_consistency <= 1.0:
        raise ConfigError(f"--min-consistency must be in [0, 1], got {cfg.min_consistency}")
    if not 0.0 <= cfg.appearance_gap <= 1.0:
        raise ConfigError(f"--appearance-gap must be in [0, 1], got {cfg.appearance_gap}")
    if (cfg.fidelity > 0 or cfg.appearance_gap > 0) and cfg.backend != "procedural":
        raise ConfigError(f"--fidelity and --appearance-gap imitate a generator's failures on the procedural "
                          f"backend's exact twins; backend {cfg.backend!r} makes its own")
    if cfg.shard is not None:
        parse_shard(f"{cfg.shard[0]}/{cfg.shard[1]}")


def select_ids(ids: list[str], limit: int | None, shard: tuple[int, int] | None) -> list[str]:
    """Sorted ids, the first ``limit`` of them, then every N-th from position I for shard (I, N)."""
    chosen = sorted(ids)[:limit] if limit else sorted(ids)
    if shard is not None:
        chosen = [sid for pos, sid in enumerate(chosen) if pos % shard[1] == shard[0]]
    return chosen


def _needs_masks(cfg: SynthConfig) -> bool:
    return cfg.backend == "controlnet" and cfg.condition == "seg"


def load_source_item(ds, source_id: str, with_mask: bool) -> SourceItem:
    """Read one source image, its boxes/labels and (optionally) its mask from a DWDDetection."""
    from PIL import Image

    i = ds.index_of(source_id)
    image = Image.fromarray(voc.load_rgb(ds.image_path(i)))
    ann = ds.annotation(i)
    mask = voc.load_label_png(ds.mask_path(i)) if with_mask else None
    if mask is not None and mask.shape != (image.height, image.width):
        raise DataError(ds.mask_path(i), f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                         f"{image.width}x{image.height}")
    return SourceItem(image=image, boxes=ann["boxes"].numpy().astype(np.float32),
                      labels=ann["labels"].numpy().astype(np.int64), mask=mask, source_id=source_id)


def _remove_own_temp_files(folder: Path, own_names: set[str]) -> None:
    # A kill during an atomic write leaves ".<name>.<random>.tmp"; only this run's names are removed,
    # so concurrent shards writing into the same folder are left alone.
    for tmp in folder.glob(".*.tmp"):
        target = tmp.name[1:].rsplit(".", 2)[0]
        if target in own_names:
            tmp.unlink(missing_ok=True)


def prepare_manifest(path: Path, overwrite: bool) -> set[tuple[str, int]]:
    """Clean a manifest for resuming and return the finished ``(source_id, index)`` keys.

    Rows whose image file is missing, repeated keys and a truncated last line are dropped; the file
    is rewritten atomically when anything changed. ``overwrite`` empties it.
    """
    if not path.exists():
        return set()
    if overwrite:
        write_jsonl(path, [])
        return set()
    raw = path.read_bytes()
    rows = read_rows(path)
    kept, seen = [], set()
    for row in rows:
        key = (row["source_id"], int(row.get("index", 0) or 0))
        if key in seen or not (path.parent / row["path"]).is_file():
            continue
        seen.add(key)
        kept.append(row)
    if len(kept) != len(rows) or (raw and not raw.endswith(b"\n")):
        write_jsonl(path, kept)
    return seen


def read_rows(path: Path) -> list[dict]:
    """The validated rows of one manifest file ([] when it does not exist); DataError names the row."""
    rows = read_jsonl(path)
    for k, row in enumerate(rows, start=1):
        validate_row(row, path, f"row {k}: ")
    return rows


def _check_no_unmerged_parts(folder: Path) -> None:
    parts = [p for p in folder.glob("manifest.part-*-of-*.jsonl") if PART_PATTERN.match(p.name)]
    if not parts:
        return
    merged = {row_key(r) for r in read_rows(folder / MANIFEST_NAME)}
    for part in parts:
        if any(row_key(r) not in merged for r in read_rows(part)):
            raise ConfigError(f"{part} holds rows not merged into {MANIFEST_NAME}; run "
                              f"`drsf synth merge {folder.parent.parent}` before an unsharded run")


def _new_stats() -> dict:
    return {"generated": 0, "resumed": 0, "filtered": 0, "skipped": {}, "seconds": 0.0}


def run_synth(cfg: SynthConfig, wait: float = 0.0) -> dict:
    """Generate every pending twin of ``cfg``; returns (and saves) a summary with per-domain counts.

    A second writer into the same folder (and shard) is refused at once; ``wait`` > 0 instead waits up
    to that many seconds for the first to finish (workers of one workflow, which then find the twins made).
    """
    validate_config(cfg)
    with_mask = _needs_masks(cfg)
    try:
        ds = DWDDetection(cfg.data, cfg.source, cfg.split, with_masks=with_mask, progress=cfg.progress)
    except DataError as exc:
        if with_mask and "mask" in exc.problem:
            raise DataError(exc.path, f"{exc.problem}; the controlnet seg condition needs the source masks "
                                      "(VOC2007/SegmentationClass/<id>.png): use --condition edges without them") from None
        raise
    ids = select_ids(ds.ids, cfg.limit, cfg.shard)
    base = Path(cfg.out) / cfg.backend
    # one writer per output folder and shard (shards of one folder run side by side): a second run into
    # the same place is refused at once, naming the first, instead of deleting its temporary files
    lock = RunLock(base, name=lock_name(cfg.shard)).acquire(wait=wait)
    try:
        return _run_locked(cfg, ds, ids, base, with_mask)
    finally:
        lock.release()


def lock_name(shard: tuple[int, int] | None) -> str:
    """The lock file of one writer in ``<out>/<backend>/``: ``.lock``, or ``.lock.part-I-of-N`` for a shard."""
    return ".lock" if shard is None else f".lock.part-{shard[0]}-of-{shard[1]}"


def _run_locked(cfg: SynthConfig, ds, ids: list[str], base: Path, with_mask: bool) -> dict:
    from tqdm.auto import tqdm

    manifests, done, stats = {}, {}, {}
    for domain in cfg.domains:
        folder = base / domain
        folder.mkdir(parents=True, exist_ok=True)
        manifests[domain] = folder / part_name(cfg.shard)
        own = {output_name(s, k, cfg.per_image) for s in ids for k in range(cfg.per_image)}
        _remove_own_temp_files(folder, own | {manifests[domain].name})
        if cfg.shard is None:
            _check_no_unmerged_parts(folder)
        done[domain] = prepare_manifest(manifests[domain], cfg.overwrite)
        if cfg.shard is not None and not cfg.overwrite:
            # rows of this shard already merged into manifest.jsonl (its part was removed by the merge)
            done[domain] |= {(r["source_id"], int(r.get("index", 0) or 0)) for r in read_rows(folder / MANIFEST_NAME)
                             if (folder / r["path"]).is_file()}
        if not manifests[domain].exists():
            write_jsonl(manifests[domain], [])  # an (empty) part marks the shard as started for merge
        stats[domain] = _new_stats()
    pending = {d: [(s, k) for s in ids for k in range(cfg.per_image) if (s, k) not in done[d]]
               for d in cfg.domains}
    for d in cfg.domains:
        stats[d]["resumed"] = len(ids) * cfg.per_image - len(pending[d])
    total = sum(len(v) for v in pending.values())
    summary = {"config": dataclasses.asdict(cfg), "source_images": len(ids), "domains": stats}
    if total == 0:
        summary["identity"] = None
        return _finish(base, cfg, summary)
    generator = build_generator(cfg)
    identity, params = generator.identity(), generator.params()
    summary["identity"] = identity
    bar = tqdm(total=total, unit="img", desc=f"synth {cfg.backend}", disable=None if cfg.progress else True)
    todo = {d: set(v) for d, v in pending.items()}
    try:
        for start in range(0, len(ids), cfg.batch_size):
            block = [s for s in ids[start:start + cfg.batch_size]
                     if any((s, k) in todo[d] for d in cfg.domains for k in range(cfg.per_image))]
            if not block:
                continue
            sources = {s: load_source_item(ds, s, with_mask) for s in block}
            reasons = {s: generator.skip_reason(sources[s]) for s in block}
            for domain in cfg.domains:
                jobs = [(s, k) for s in block for k in range(cfg.per_image) if (s, k) in todo[domain]]
                for s, k in [j for j in jobs if reasons[j[0]]]:
                    key = reasons[s].split(" ")[0]
                    stats[domain]["skipped"][key] = stats[domain]["skipped"].get(key, 0) + 1
                    bar.update(1)
                jobs = [j for j in jobs if not reasons[j[0]]]
                for c in range(0, len(jobs), cfg.batch_size):
                    _run_chunk(cfg, generator, domain, jobs[c:c + cfg.batch_size], sources,
                               manifests[domain], identity, params, stats[domain])
                    bar.update(len(jobs[c:c + cfg.batch_size]))
    finally:
        bar.close()
        generator.close()
    return _finish(base, cfg, summary)


def _run_chunk(cfg, generator, domain, jobs, sources, manifest, identity, params, stats) -> None:
    seeds = [item_seed(cfg.seed, s, domain, k) for s, k in jobs]
    t0 = time.perf_counter()
    twins = generator.generate([sources[s] for s, _ in jobs], domain, seeds)
    seconds = (time.perf_counter() - t0) / max(1, len(jobs))
    stats["seconds"] += seconds * len(jobs)
    for (s, k), seed, twin in zip(jobs, seeds, twins):
        src = sources[s]
        score = layout_consistency(src.image, twin.image, src.boxes, twin.crop)
        name = output_name(s, k, cfg.per_image)
        if score < cfg.min_consistency:
            stats["filtered"] += 1
            (manifest.parent / name).unlink(missing_ok=True)  # an unlisted twin must not linger
            continue
        atomic_save_image(twin.image, manifest.parent / name, quality=cfg.jpeg_quality)
        row = {
            "source_id": s, "source_domain": cfg.source, "domain": domain, "path": name,
            "generator": generator.name, "prompt": twin.prompt, "seed": seed, "run_seed": cfg.seed,
            "index": k, "size": [int(v) for v in twin.size],
            "crop": None if twin.crop is None else [int(v) for v in twin.crop],
            **params, **identity, "seconds": round(seconds, 4), "consistency": round(score, 4),
        }
        for key, value in twin.extra.items():
            row.setdefault(key, value)  # backend extras never replace a standard field
        append_manifest_row(manifest, row)
        stats["generated"] += 1


def _finish(base: Path, cfg: SynthConfig, summary: dict) -> dict:
    gen = sum(s["generated"] for s in summary["domains"].values())
    secs = sum(s["seconds"] for s in summary["domains"].values())
    summary["generated"] = gen
    summary["images_per_second"] = round(gen / secs, 3) if secs > 0 else None
    for s in summary["domains"].values():
        s["seconds"] = round(s["seconds"], 3)
    name = "summary.json" if cfg.shard is None else f"summary.part-{cfg.shard[0]}-of-{cfg.shard[1]}.json"
    atomic_write_json(base / name, summary)
    return summary


def merge_shards(root: str | Path, allow_partial: bool = False) -> dict:
    """Join the ``manifest.part-I-of-N.jsonl`` files of every folder below ``root`` into its
    ``manifest.jsonl`` (sorted by source id and index), then delete the parts. Returns
    ``{folder: rows in manifest.jsonl}`` (empty when there is nothing to merge).

    Two parts listing the same image is an error, and so is a missing shard unless
    ``allow_partial``. Rows already in ``manifest.jsonl`` are kept unless a part lists the same
    image (the part is the record of the run that last wrote the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder does not exist")
    folders = sorted({p.parent for p in root.rglob("manifest.part-*-of-*.jsonl") if PART_PATTERN.match(p.name)})
    if not folders:
        if any(root.rglob(MANIFEST_NAME)):
            return {}  # already merged
        raise DataError(root, "no manifest.part-<I>-of-<N>.jsonl files in this folder or below")
    return {str(f): _merge_folder(f, allow_partial) for f in folders}


def _merge_folder(folder: Path, allow_partial: bool) -> int:
    parts = {}
    for p in folder.glob("manifest.part-*-of-*.jsonl"):
        m = PART_PATTERN.match(p.name)
        if m:
            parts[p] = (int(m.group(1)), int(m.group(2)))
    counts = {n for _, n in parts.values()}
    if len(counts) != 1:
        raise DataError(folder, f"shard parts disagree on the number of shards: {sorted(counts)}")
    n = counts.pop()
    record = folder / SHARDS_RECORD
    merged_before = set()
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("of") == n:
            merged_before = set(info.get("merged", []))
    present = {i for i, _ in parts.values()} | merged_before
    missing = sorted(set(range(n)) - present)
    if missing and not allow_partial:
        raise DataError(folder, f"shard(s) {missing} of {n} have no manifest part; run them first "
                                "(or merge with --allow-partial)")
    merged: dict = {}
    origin: dict = {}
    for part in sorted(parts, key=lambda p: parts[p][0]):
        for k, row in enumerate(read_rows(part), start=1):
            key = row_key(row)
            if key in merged:
                raise DataError(part, f"row {k}: image {key} is also listed in {origin[key]}; shards "
                                      "must not overlap (were they run with different --limit or ids?)")
            merged[key], origin[key] = row, f"{part.name} row {k}"
    main = folder / MANIFEST_NAME
    for row in read_rows(main):
        merged.setdefault(row_key(row), row)
    rows = sorted(merged.values(), key=lambda r: (r["source_id"], int(r.get("index", 0) or 0)))
    write_jsonl(main, rows)
    atomic_write_json(record, {"of": n, "merged": sorted(present)})
    # Parts go only after manifest.jsonl is safely replaced; a kill in between leaves parts whose rows
    # are already merged, and merging again gives the same file.
    for part in parts:
        part.unlink(missing_ok=True)
    return len(rows)
