"""The Diverse Weather Dataset (DWD) in Pascal VOC layout, and the evaluation protocols around it.

Layout per domain: ``ROOT/<domain>/VOC2007/{Annotations/<id>.xml, ImageSets/Main/{train,test}.txt,
JPEGImages/<id>.jpg}`` (plus ``SegmentationClass/<id>.png`` in the mini-weather benchmark); real copies
sometimes nest one level deeper, and both variants are found.

Evaluation protocols (which split of each domain is scored):

============== ============= ============= ========== =========== ===========
protocol       daytime_clear daytime_foggy dusk_rainy night_rainy night_sunny
============== ============= ============= ========== =========== ===========
all_images     test          all           all        all         all
drsf_code      test          test          all        all         test
============== ============= ============= ========== =========== ===========

``all_images`` (the default) is what most peers report: each target is scored on every one of its
images (DWD's ``train.txt`` of a target lists them all; ``all`` is the de-duplicated union of
``train.txt`` and ``test.txt``, which equals it there, and the rainy domains have no ``test.txt``).
``drsf_code`` is what the DRSF public code does: daytime_foggy and night_sunny are scored on ``test``.
The source domain is always scored on ``test``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from drsf_kit.data import voc
from drsf_kit.data.voc import Problem
from drsf_kit.errors import ConfigError, DataError

SPLITS = ("train", "test", "all", "fit", "val")  # fit/val: a held-out part of train (mini_weather.holdout_split)
DEFAULT_PROTOCOL = "all_images"
PROTOCOLS: dict[str, dict[str, str]] = {
    "all_images": {"daytime_clear": "test", "daytime_foggy": "all", "dusk_rainy": "all",
                   "night_rainy": "all", "night_sunny": "all"},
    "drsf_code": {"daytime_clear": "test", "daytime_foggy": "test", "dusk_rainy": "all",
                  "night_rainy": "all", "night_sunny": "test"},
}
ON_ERROR = ("raise", "skip")


def split_for(domain: str, protocol: str = DEFAULT_PROTOCOL) -> str:
    """The split of ``domain`` that ``protocol`` scores (see the table in this module's docstring)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    table = PROTOCOLS[protocol]
    if domain not in table:
        raise ConfigError(f"protocol {protocol!r} has no split for domain {domain!r}; "
                          f"known domains: {', '.join(table)}")
    return table[domain]


def split_ids(voc_root: Path, split: str) -> list[str]:
    """Image ids of ``split`` (``train``, ``test`` or ``all`` = both lists in order, de-duplicated).

    ``all`` needs at least one list (the rainy DWD domains have no ``test.txt``); a missing list
    for ``train``/``test`` raises ``DataError`` naming the file.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    main = voc_root / "ImageSets" / "Main"
    if split != "all":
        return voc.read_id_list(main / f"{split}.txt")
    present = [main / f"{s}.txt" for s in ("train", "test") if (main / f"{s}.txt").is_file()]
    if not present:
        raise DataError(main, "split files are missing: expected train.txt and/or test.txt")
    ids: dict[str, None] = {}
    for path in present:
        ids.update(dict.fromkeys(voc.read_id_list(path)))
    return list(ids)


@dataclass
class _Item:
    image_id: str
    image_path: Path
    annotation_path: Path
    size: tuple[int, int]  # (width, height)
    boxes: list
    labels: list
    difficult: list


class DWDDetection(Dataset):
    """One DWD domain as a torchvision-style detection dataset.

    Every annotation is parsed at construction so bad files surface at once; images are decoded in
    ``__getitem__``. Items return ``(image float32 [3,H,W] in [0,1], target)`` with ``boxes`` (xyxy,
    0-based pixels), ``labels`` (1-based), ``difficult``, ``image_id`` and ``mask`` when ``with_masks``.

    Args:
        root: folder holding one sub-folder per domain.
        domain: e.g. ``daytime_clear``.
        split: ``train``, ``test`` or ``all``.
        transforms: optional ``f(image, target) -> (image, target)``.
        on_error: ``raise`` (the first bad item raises ``DataError``) or ``skip`` (bad items are dropped
            and recorded in ``.problems``).
        strict: unknown class names are errors instead of warnings.
        with_masks: also load ``SegmentationClass/<id>.png`` (train ids) as ``target["mask"]``.
        verify_images: decode every image at construction. Defaults to True with ``on_error="skip"``,
            so a skipping dataset never meets an undecodable image during training.
        progress: show a progress bar while parsing.
    """

    def __init__(self, root: str | os.PathLike, domain: str, split: str = "train",
                 transforms: Callable | None = None, on_error: str = "raise", strict: bool = False,
                 with_masks: bool = False, verify_images: bool | None = None, progress: bool = True):
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.root = Path(root)
        self.domain = domain
        self.split = split
        self.transforms = transforms
        self.on_error = on_error
        self.strict = strict
        self.with_masks = with_masks
        self.verify_images = (on_error == "skip") if verify_images is None else bool(verify_images)
        self.voc_root = voc.find_voc_root(self.root, domain)
        self.problems: list[Problem] = []
        self._items: list[_Item] = []
        self._build(split_ids(self.voc_root, split), progress)
        self.ids = [item.image_id for item in self._items]
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}

    # ---- construction ---------------------------------------------------------------------------
    def _report(self, problem: Problem) -> None:
        self.problems.append(problem)
        if problem.severity == "error" and self.on_error == "raise":
            raise DataError(problem.path, problem.message)

    def _build(self, ids: list[str], progress: bool) -> None:
        ann_dir = self.voc_root / "Annotations"
        img_dir = self.voc_root / "JPEGImages"
        annotations = {os.path.splitext(n)[0] for n in _listdir(ann_dir) if n.endswith(".xml")}
        images = voc.list_images(img_dir)
        masks = set(voc.list_images(self.mask_dir)) if self.with_masks else set()
        split_name = f"{self.split}.txt" if self.split != "all" else "train.txt/test.txt"
        for image_id in tqdm(ids, desc=f"{self.domain}/{self.split}", disable=None if progress else True,
                             leave=False):
            item = self._parse_one(image_id, split_name, ann_dir, img_dir, annotations, images, masks)
            if item is not None:
                self._items.append(item)

    def _parse_one(self, image_id, split_name, ann_dir, img_dir, annotations, images, masks) -> _Item | None:
        ann_path = ann_dir / f"{image_id}.xml"
        if image_id not in annotations:
            self._report(Problem(str(ann_path), voc.MISSING_ANNOTATION,
                                 f"image id {image_id!r} is listed in {split_name} but has no annotation file"))
            return None
        try:
            ann = voc.parse_voc_xml(ann_path)
        except DataError as exc:
            self._report(Problem(exc.path, voc.BAD_XML, exc.problem))
            return None
        name = images.get(image_id)
        if name is None and ann.filename:
            name = images.get(os.path.splitext(ann.filename)[0])
        if name is None:
            self._report(Problem(str(img_dir / f"{image_id}.jpg"), voc.MISSING_IMAGE,
                                 f"image file is missing (annotation {ann_path.name} has no image in JPEGImages)"))
            return None
        image_path = img_dir / name
        size = ann.size
        try:
            if self.verify_images:
                actual = voc.verify_image(image_path)
                if size is not None and actual != size:
                    self._report(Problem(str(ann_path), voc.SIZE_MISMATCH,
                                         f"annotation says {size[0]}x{size[1]} but the image is "
                                         f"{actual[0]}x{actual[1]}; using the image size", "warning"))
                size = actual
            elif size is None:
                size = voc.read_image_size(image_path)
        except DataError as exc:
            self._report(Problem(exc.path, voc.UNREADABLE_IMAGE, exc.problem))
            return None
        if self.with_masks and image_id not in masks:
            self._report(Problem(str(self.mask_dir / f"{image_id}.png"), voc.MISSING_MASK, "mask file is missing"))
            return None
        boxes, labels, difficult, found = voc.objects_to_arrays(ann, size, strict=self.strict)
        bad = False
        for problem in found:
            self._report(problem)
            bad = bad or problem.severity == "error"
        if bad:
            return None
        return _Item(image_id, image_path, ann_path, size, boxes, labels, difficult)

    # ---- access ---------------------------------------------------------------------------------
    @property
    def mask_dir(self) -> Path:
        """The folder of the segmentation masks (``SegmentationClass``)."""
        return self.voc_root / "SegmentationClass"

    def __len__(self) -> int:
        return len(self._items)

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id`` in this dataset; ``KeyError`` when it is not part of it."""
        return self._index[image_id]

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image file."""
        return self._items[i].image_path

    def annotation_path(self, i: int) -> Path:
        """Path of item ``i``'s XML annotation."""
        return self._items[i].annotation_path

    def mask_path(self, i: int) -> Path:
        """Path of item ``i``'s segmentation mask (it may not exist unless ``with_masks``)."""
        return self.mask_dir / f"{self._items[i].image_id}.png"

    def image_size(self, i: int) -> tuple[int, int]:
        """``(width, height)`` of item ``i`` (from its annotation, or its file when verified)."""
        return self._items[i].size

    def annotation(self, i: int) -> dict:
        """Item ``i``'s target without decoding the image (for evaluation): boxes, labels, difficult, image_id."""
        item = self._items[i]
        return {
            "boxes": torch.tensor(item.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(item.labels, dtype=torch.int64),
            "difficult": torch.tensor(item.difficult, dtype=torch.bool),
            "image_id": item.image_id,
        }

    def __getitem__(self, i: int):
        item = self._items[i]
        arr = voc.load_rgb(item.image_path)
        height, width = arr.shape[:2]
        if (width, height) != item.size:
            raise DataError(item.annotation_path, f"annotation says {item.size[0]}x{item.size[1]} but image "
                                                  f"{item.image_path.name} is {width}x{height}; run `drsf data "
                                                  f"check` or load with verify_images=True")
        image = voc.rgb_to_tensor(arr)
        target = self.annotation(i)
        if self.with_masks:
            mask_path = self.mask_path(i)
            mask = voc.load_label_png(mask_path)
            if mask.shape != (height, width):
                raise DataError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but image "
                                           f"{item.image_path.name} is {width}x{height}")
            target["mask"] = torch.from_numpy(mask.astype("int64"))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"DWDDetection(root={str(self.root)!r}, domain={self.domain!r}, split={self.split!r}, "
                f"images={len(self)}, problems={len(self.problems)})")


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
