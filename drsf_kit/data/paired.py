"""Generated pseudo-domain images paired with the labels of the source images they were made from.

Every generated image is the *twin* of one source image (same layout), so it reuses that image's
boxes or mask, mapped through the manifest geometry (crop, then resize). The training engine builds
batches of source images with their twins from ``source_ids``, ``twins`` and ``source_index``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from drsf_kit.data import voc
from drsf_kit.data.cityscapes import MiniWeatherSegmentation
from drsf_kit.data.classes import SOURCE_DOMAIN
from drsf_kit.data.dwd import ON_ERROR, DWDDetection, split_ids
from drsf_kit.data.manifest import map_boxes, map_mask, read_manifests, row_path
from drsf_kit.data.voc import Problem
from drsf_kit.errors import ConfigError, DataError

TASKS = ("det", "seg")
UNKNOWN_SOURCE = "unknown_source"


def size_problem(row: dict, size: tuple[int, int]) -> str | None:
    """What is wrong when a generated image's ``(width, height)`` is not the ``size`` its manifest row
    gives (its labels are mapped to that size), else None."""
    if row.get("size") is not None and tuple(row["size"]) != tuple(size):
        return (f"{row.get('_manifest', 'its manifest')} says the image is {row['size'][0]}x{row['size'][1]} "
                f"but it is {size[0]}x{size[1]}")
    return None


class PairedSynthetic(Dataset):
    """Generated images with their source image's labels, read from the manifests under ``synth_root``.

    Items are ``(image, target)``. For ``task="det"`` the target has ``boxes``, ``labels``, ``difficult``
    and ``image_id``; for ``task="seg"`` it has ``mask`` (int64 train ids) and ``image_id``. Both add
    ``source_id`` and ``domain`` (the pseudo-domain's name).

    Args:
        data_root: DWD-layout root of the real data (the source domain lives there).
        synth_root: a manifest file, or a folder searched recursively for manifests.
        source_domain: the domain the images were generated from.
        source_split: only twins of this source split are used (``train``, ``test``, ``all`` or None = all);
            source ids are still joined against every source image, so a twin of a test image is left out
            silently while an id the source does not have is an error.
        domains: pseudo-domain names to keep (None = every one present).
        task: ``det`` or ``seg``.
        transforms: optional ``f(image, target) -> (image, target)``.
        on_error: ``raise`` or ``skip`` (bad rows dropped and listed in ``.problems``).
        verify_images: decode every generated image at construction (default: only when skipping).
        progress: show progress bars while indexing.
    """

    def __init__(self, data_root: str | os.PathLike, synth_root: str | os.PathLike,
                 source_domain: str = SOURCE_DOMAIN, source_split: str | None = "train",
                 domains: list[str] | tuple[str, ...] | None = None, task: str = "det",
                 transforms: Callable | None = None, on_error: str = "raise", verify_images: bool | None = None,
                 progress: bool = True):
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.data_root, self.synth_root = Path(data_root), Path(synth_root)
        self.source_domain, self.source_split, self.task = source_domain, source_split, task
        self.transforms, self.on_error = transforms, on_error
        verify = (on_error == "skip") if verify_images is None else bool(verify_images)
        self.problems: list[Problem] = []

        rows = self._select_rows(read_manifests(self.synth_root), domains)
        if task == "det":
            self.source = DWDDetection(self.data_root, source_domain, "all", on_error=on_error, progress=progress)
        else:
            self.source = MiniWeatherSegmentation(self.data_root, source_domain, "all", on_error=on_error)
        self.problems.extend(self.source.problems)
        every_id = set(split_ids(self.source.voc_root, "all"))
        wanted = None if source_split in (None, "all") else set(split_ids(self.source.voc_root, source_split))

        self.rows: list[dict] = []
        self._source_of: list[int] = []
        for row in tqdm(rows, desc="pairing", disable=None if progress else True, leave=False):
            j = self._join(row, every_id, wanted, verify)
            if j is not None:
                self.rows.append(row)
                self._source_of.append(j)
        self._twins: dict[str, dict[str, list[int]]] = {}
        for i, row in enumerate(self.rows):
            self._twins.setdefault(row["source_id"], {}).setdefault(row["domain"], []).append(i)
        self.domains = sorted({row["domain"] for row in self.rows})
        self.source_ids = sorted(self._twins)

    # ---- construction ---------------------------------------------------------------------------
    def _select_rows(self, rows: list[dict], domains) -> list[dict]:
        found = sorted({row["source_domain"] for row in rows})
        rows = [row for row in rows if row["source_domain"] == self.source_domain]
        if not rows:
            raise DataError(self.synth_root, f"no manifest rows were generated from source domain "
                                             f"{self.source_domain!r} (found: {', '.join(found) or 'none'})")
        present = sorted({row["domain"] for row in rows})
        if domains is not None:
            missing = [d for d in domains if d not in present]
            if missing:
                raise ConfigError(f"pseudo-domain(s) {', '.join(missing)} not found under {self.synth_root}; "
                                  f"present: {', '.join(present)}")
            rows = [row for row in rows if row["domain"] in set(domains)]
        return rows

    def _report(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self.on_error == "raise":
            raise DataError(problem.path, problem.message)

    def _join(self, row: dict, every_id: set, wanted: set | None, verify: bool) -> int | None:
        sid = row["source_id"]
        try:
            j = self.source.index_of(sid)
        except KeyError:
            why = ("was dropped from the source as a bad item (see .source.problems)" if sid in every_id
                   else f"is not an image of {self.source_domain!r} under {self.data_root}")
            self._report(Problem(row["_manifest"], UNKNOWN_SOURCE,
                                 f"row for {row['path']} names source_id {sid!r}, which {why}"))
            return None
        if wanted is not None and sid not in wanted:
            return None  # a twin of an image outside the requested source split: not used, not a problem
        path = row_path(row)
        if not path.is_file():
            self._report(Problem(str(path), voc.MISSING_IMAGE,
                                 f"generated image listed in {row['_manifest']} is missing"))
            return None
        try:  # the header's size against the manifest's, before training (a full decode when verifying)
            size = voc.verify_image(path) if verify else voc.read_image_size(path)
        except DataError as exc:
            self._report(Problem(exc.path, voc.UNREADABLE_IMAGE, exc.problem))
            return None
        problem = size_problem(row, size)
        if problem:
            self._report(Problem(str(path), voc.SIZE_MISMATCH, problem))
            return None
        return j

    # ---- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def twins(self, source_id: str) -> dict[str, list[int]]:
        """Item indices of the twins of ``source_id``, by pseudo-domain (empty dict when it has none)."""
        return {domain: list(items) for domain, items in self._twins.get(source_id, {}).items()}

    def source_index(self, source_id: str) -> int:
        """Position of ``source_id`` in ``.source`` (the source dataset, split ``all``)."""
        return self.source.index_of(source_id)

    def image_path(self, i: int) -> Path:
        """Path of generated item ``i``."""
        return row_path(self.rows[i])

    def __getitem__(self, i: int):
        row = self.rows[i]
        path = row_path(row)
        arr = voc.load_rgb(path)
        size = (arr.shape[1], arr.shape[0])
        problem = size_problem(row, size)
        if problem:  # the file changed after the dataset was built
            raise DataError(path, problem)
        j = self._source_of[i]
        crop = row.get("crop")
        if self.task == "det":
            ann = self.source.annotation(j)
            boxes, keep = map_boxes(ann["boxes"], crop, size, self.source.image_size(j))
            target = {"boxes": boxes, "labels": ann["labels"][keep], "difficult": ann["difficult"][keep]}
        else:
            target = {"mask": map_mask(self.source.load_mask(j), crop, size)}
        target.update(image_id=path.stem, source_id=row["source_id"], domain=row["domain"])
        image = voc.rgb_to_tensor(arr)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"PairedSynthetic(synth_root={str(self.synth_root)!r}, task={self.task!r}, images={len(self)}, "
                f"domains={self.domains}, source_ids={len(self.source_ids)})")
