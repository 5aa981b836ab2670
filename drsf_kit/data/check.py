"""``drsf data check``: find every problem in a dataset folder before a training run meets it.

The check builds each dataset in ``skip`` mode with every image decoded, so all bad items are listed
at once, and adds checks the loaders leave to it: segmentation masks must have their image's size and
hold only train ids 0..18 or 255. Errors (unusable items, wrong layout) fail the check; warnings
(clipped boxes, resized labels) fail it only with ``strict``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from drsf_kit.data import voc
from drsf_kit.data.cityscapes import CityscapesSegmentation, GTAVSegmentation
from drsf_kit.data.classes import DWD_CLASSES, DWD_DOMAINS, IGNORE_INDEX, NUM_SEG_CLASSES
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.voc import Problem
from drsf_kit.errors import ConfigError, DataError

FORMATS = ("dwd", "cityscapes", "gtav")
EMPTY_SPLIT = "empty_split"  # a split file that lists no image
CITYSCAPES_SPLITS = ("train", "val", "test")


@dataclass
class DomainSummary:
    """What one domain (or split group) holds: images per split, boxes per class, masks checked."""

    name: str
    images: dict[str, int | None] = field(default_factory=dict)  # None: the split file is absent
    boxes: dict[str, int] = field(default_factory=dict)
    masks: int = 0
    problems: Counter = field(default_factory=Counter)  # kind -> count


@dataclass
class CheckReport:
    """The result of ``check_dataset``: per-domain summaries and every problem found."""

    format: str
    root: str
    strict: bool
    domains: list[DomainSummary]
    problems: list[Problem]

    def count(self, severity: str) -> int:
        """Number of problems of one severity (``error``, ``warning``, ``info``)."""
        return sum(p.severity == severity for p in self.problems)

    @property
    def ok(self) -> bool:
        """No errors, and no warnings either when ``strict``."""
        return self.count("error") == 0 and not (self.strict and self.count("warning"))

    @property
    def exit_code(self) -> int:
        """0 when ``ok``, else 1."""
        return 0 if self.ok else 1


def check_dataset(path: str | os.PathLike, format: str = "dwd", strict: bool = False,
                  domains: list[str] | None = None, progress: bool = True) -> CheckReport:
    """Check a dataset folder and return a ``CheckReport``.

    Args:
        path: dataset root (DWD: holds one folder per domain; Cityscapes: holds leftImg8bit/gtFine;
            GTAV: holds images/labels).
        format: ``dwd``, ``cityscapes`` or ``gtav``.
        strict: unknown class names become errors and warnings fail the check.
        domains: DWD domains to check (default: every domain folder found).
        progress: show progress bars.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown dataset format {format!r}; valid formats: {', '.join(FORMATS)}")
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    if format == "dwd":
        summaries, problems = _check_dwd(root, strict, domains, progress)
    elif format == "cityscapes":
        summaries, problems = _check_cityscapes(root, progress)
    else:
        summaries, problems = _check_gtav(root, progress)
    return CheckReport(format, str(root), strict, summaries, problems)


# ---- DWD -----------------------------------------------------------------------------------------

def find_domains(root: Path) -> list[str]:
    """Domain folders under ``root`` that hold a VOC2007 folder: DWD domains in their usual order, then others."""
    found = []
    for name in sorted(os.listdir(root)):
        if (root / name).is_dir():
            try:
                voc.find_voc_root(root, name)
            except DataError:
                continue
            found.append(name)
    order = {d: k for k, d in enumerate(DWD_DOMAINS)}
    return sorted(found, key=lambda d: (order.get(d, len(order)), d))


def _check_dwd(root: Path, strict: bool, domains, progress: bool):
    names = list(domains) if domains else find_domains(root)
    if not names:
        raise DataError(root, "no domain folders found; expected ROOT/<domain>/VOC2007/{Annotations,ImageSets,"
                              "JPEGImages} (or one of the nested variants)")
    summaries, problems = [], []
    for name in names:
        summary = DomainSummary(name)
        summaries.append(summary)
        found: list[Problem] = []
        try:
            voc_root = voc.find_voc_root(root, name)
            for split in ("train", "test"):
                split_file = voc_root / "ImageSets" / "Main" / f"{split}.txt"
                summary.images[split] = len(voc.read_id_list(split_file)) if split_file.is_file() else None
                if summary.images[split] == 0:  # a training or scoring run would find nothing to use
                    found.append(Problem(str(split_file), EMPTY_SPLIT, f"split {split!r} of domain {name!r} "
                                                                       f"lists no images"))
            ds = DWDDetection(root, name, "all", on_error="skip", strict=strict, verify_images=True,
                              progress=progress)
        except DataError as exc:
            found.append(Problem(exc.path, voc.LAYOUT, exc.problem))
        else:
            summary.images["all"] = len(ds)
            counts = Counter()
            for i in range(len(ds)):
                counts.update(ds.annotation(i)["labels"].tolist())
            summary.boxes = {cls: counts.get(k + 1, 0) for k, cls in enumerate(DWD_CLASSES)}
            found.extend(ds.problems)
            if ds.mask_dir.is_dir():
                summary.masks = _check_dwd_masks(ds, found, progress)
        summary.problems.update(p.kind for p in found)
        problems.extend(found)
    return summaries, problems


def _mask_values_problem(mask: np.ndarray) -> str | None:
    values = np.unique(mask)
    bad = values[(values >= NUM_SEG_CLASSES) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10])
        return f"mask holds values {shown}{' ...' if bad.size > 10 else ''}; expected train ids 0..18 or 255"
    return None


def _check_dwd_masks(ds, found: list[Problem], progress: bool) -> int:
    checked = 0
    for i in tqdm(range(len(ds)), desc=f"{ds.domain} masks", disable=None if progress else True, leave=False):
        path = ds.mask_path(i)
        if not path.is_file():
            found.append(Problem(str(path), voc.MISSING_MASK, "mask file is missing", "warning"))
            continue
        try:
            mask = voc.load_label_png(path)
        except DataError as exc:
            found.append(Problem(exc.path, voc.BAD_MASK, exc.problem))
            continue
        checked += 1
        width, height = ds.image_size(i)
        if mask.shape != (height, width):
            found.append(Problem(str(path), voc.SIZE_MISMATCH, f"mask is {mask.shape[1]}x{mask.shape[0]} but "
                                                               f"image {ds.image_path(i).name} is {width}x{height}"))
            continue
        problem = _mask_values_problem(mask)
        if problem:
            found.append(Problem(str(path), voc.BAD_MASK, problem))
    return checked


# ---- Cityscapes / GTAV -----------------------------------------------------------------------------

def _check_seg(ds, summary: DomainSummary, found: list[Problem], progress: bool) -> None:
    """Mask size against image size (labels the dataset resizes are allowed) and mask values, item by item."""
    for i in tqdm(range(len(ds)), desc=f"{summary.name} masks", disable=None if progress else True, leave=False):
        try:
            width, height = voc.read_image_size(ds.image_path(i))
            mask = ds.load_mask(i).numpy()
        except DataError as exc:
            found.append(Problem(exc.path, voc.BAD_MASK, exc.problem))
            continue
        summary.masks += 1
        if mask.shape != (height, width) and not ds.resizes_label(i):
            found.append(Problem(str(ds.mask_path(i)), voc.SIZE_MISMATCH, f"label is {mask.shape[1]}x{mask.shape[0]} "
                                                                          f"but image is {width}x{height}"))
            continue
        problem = _mask_values_problem(mask)
        if problem:
            found.append(Problem(str(ds.mask_path(i)), voc.BAD_MASK, problem))


def _check_cityscapes(root: Path, progress: bool):
    summary, found = DomainSummary("cityscapes"), []
    splits = [s for s in CITYSCAPES_SPLITS if (root / "leftImg8bit" / s).is_dir()]
    if not splits:
        raise DataError(root / "leftImg8bit", "Cityscapes images folder is missing; expected "
                                              "leftImg8bit/<split>/<city>/<name>_leftImg8bit.png")
    for split in splits:
        try:
            ds = CityscapesSegmentation(root, split, on_error="skip", verify_images=True)
        except DataError as exc:
            found.append(Problem(exc.path, voc.LAYOUT, exc.problem))
            summary.images[split] = None
            continue
        summary.images[split] = len(ds)
        found.extend(ds.problems)
        _check_seg(ds, summary, found, progress)
    summary.problems.update(p.kind for p in found)
    return [summary], found


def _check_gtav(root: Path, progress: bool):
    summary = DomainSummary("gtav")
    ds = GTAVSegmentation(root, None, on_error="skip", mismatch="resize", verify_images=True, progress=progress)
    found = list(ds.problems)
    summary.images["all"] = len(ds)
    for split in ("train", "val", "test"):
        if (root / "split" / f"{split}.txt").is_file():
            summary.images[split] = len(voc.read_id_list(root / "split" / f"{split}.txt"))
    _check_seg(ds, summary, found, progress)
    summary.problems.update(p.kind for p in found)
    return [summary], found


# ---- text ------------------------------------------------------------------------------------------

def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        # names and the problem column read best left-aligned, counts right-aligned
        return "  ".join(c.ljust(w) if k in (0, len(cells) - 1) else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def format_report(report: CheckReport, markdown: bool = False, max_problems: int | None = 200) -> str:
    """Render a ``CheckReport``: the per-domain table, then the problem list (errors first), then the verdict.

    ``max_problems`` caps the listed problems (None or 0 = all); the rest are counted.
    """
    order = {"train": 0, "val": 1, "test": 2, "all": 3}
    splits = sorted({s for d in report.domains for s in d.images}, key=lambda s: (order.get(s, 4), s))
    classes = [c for c in DWD_CLASSES if any(d.boxes.get(c) for d in report.domains)] \
        if report.format == "dwd" else []
    headers = ["domain"] + [f"images:{s}" for s in splits] + [f"boxes:{c}" for c in classes] + ["masks", "problems"]
    rows = []
    for d in report.domains:
        problems = ", ".join(f"{kind}={n}" for kind, n in sorted(d.problems.items())) or "none"
        rows.append([d.name] + ["-" if d.images.get(s) is None else str(d.images[s]) for s in splits]
                    + [str(d.boxes.get(c, 0)) for c in classes] + [str(d.masks), problems])
    title = f"{report.format} check of {report.root}" + (" (strict)" if report.strict else "")
    out = [f"## {title}" if markdown else title, "", _table(headers, rows, markdown), ""]

    counts = {s: report.count(s) for s in ("error", "warning", "info")}
    if report.problems:
        out.append(f"Problems: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info")
        order = {"error": 0, "warning": 1, "info": 2}
        listed = sorted(report.problems, key=lambda p: order.get(p.severity, 3))
        limit = len(listed) if not max_problems else max_problems
        bullet = "- " if markdown else "  "
        out += [f"{bullet}{p.severity}: {p.path}: {p.message}" for p in listed[:limit]]
        if len(listed) > limit:
            out.append(f"{bullet}... and {len(listed) - limit} more")
        out.append("")
    if report.ok:
        verdict = "OK" + (f" ({counts['warning']} warnings)" if counts["warning"] else "")
    elif counts["error"]:
        verdict = f"FAILED: {counts['error']} errors"
    else:
        verdict = f"FAILED (strict): {counts['warning']} warnings"
    out.append(f"Result: {verdict}")
    return "\n".join(out)
