"""Semantic segmentation datasets: the mini-weather masks, Cityscapes and GTAV.

Every dataset returns ``(image float32 [3,H,W] in [0,1], mask int64 [H,W])`` with Cityscapes train ids
0..18 and 255 = ignore. Cityscapes and GTAV store *label ids*; they are mapped with
``classes.label_lut()`` (Cityscapes' ``*_gtFine_labelTrainIds.png`` is used as is when present).

Layouts:
- mini-weather: ``ROOT/<domain>/VOC2007/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
  ImageSets/Main/{train,test}.txt}`` (train ids already).
- Cityscapes: ``ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``.
- GTAV: ``ROOT/images/<id>.png`` and ``ROOT/labels/<id>.png``; optional ``ROOT/split/{train,val,test}.txt``
  or ``ROOT/split.mat`` (``trainIds``/``valIds``/``testIds``). A few GTAV images differ in size from
  their labels; ``mismatch`` chooses to resize the label (nearest), skip the pair, or fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from drsf_kit.data import voc
from drsf_kit.data.classes import label_lut
from drsf_kit.data.dwd import ON_ERROR, split_ids
from drsf_kit.data.voc import Problem
from drsf_kit.errors import ConfigError, DataError

MISMATCH_POLICIES = ("resize", "skip", "error")


@dataclass
class _SegItem:
    image_id: str
    image_path: Path
    label_path: Path
    map_ids: bool  # True when the label file holds label ids (mapped through label_lut)
    resize_label: bool = False


class _SegmentationDataset(Dataset):
    """Shared machinery: problem reporting, optional decode checks, loading and id mapping."""

    def __init__(self, transforms: Callable | None, on_error: str, verify_images: bool | None):
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.transforms = transforms
        self.on_error = on_error
        self.verify_images = (on_error == "skip") if verify_images is None else bool(verify_images)
        self.problems: list[Problem] = []
        self._items: list[_SegItem] = []
        self._lut = label_lut()

    def _report(self, problem: Problem) -> None:
        self.problems.append(problem)
        if problem.severity == "error" and self.on_error == "raise":
            raise DataError(problem.path, problem.message)

    def _verified(self, item: _SegItem) -> bool:
        """Decode image and label when ``verify_images``; report and return False when one is bad."""
        if not self.verify_images:
            return True
        try:
            voc.verify_image(item.image_path)
            voc.load_label_png(item.label_path)
        except DataError as exc:
            self._report(Problem(exc.path, voc.UNREADABLE_IMAGE, exc.problem))
            return False
        return True

    def _finish(self) -> None:
        self.ids = [item.image_id for item in self._items]
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self._items)

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id`` in this dataset; ``KeyError`` when absent."""
        return self._index[image_id]

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image."""
        return self._items[i].image_path

    def mask_path(self, i: int) -> Path:
        """Path of item ``i``'s label image."""
        return self._items[i].label_path

    def resizes_label(self, i: int) -> bool:
        """True when item ``i``'s label differs in size from its image and is resized on load."""
        return self._items[i].resize_label

    def load_mask(self, i: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Item ``i``'s mask in train ids (int64 ``[H,W]``) without decoding the image.

        ``size`` ``(width, height)`` is the image size it must match (checked, or the label is resized
        with nearest when the item is marked for resizing).
        """
        from PIL import Image

        item = self._items[i]
        mask = voc.load_label_png(item.label_path)
        if item.map_ids:
            mask = self._lut[mask]
        if size is not None and mask.shape != (size[1], size[0]):
            if not item.resize_label:
                raise DataError(item.label_path, f"label is {mask.shape[1]}x{mask.shape[0]} but image "
                                                 f"{item.image_path.name} is {size[0]}x{size[1]}")
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        return torch.from_numpy(mask.astype(np.int64))

    def __getitem__(self, i: int):
        arr = voc.load_rgb(self._items[i].image_path)
        mask = self.load_mask(i, (arr.shape[1], arr.shape[0]))
        image = voc.rgb_to_tensor(arr)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class MiniWeatherSegmentation(_SegmentationDataset):
    """One mini-weather domain as segmentation data: JPEGImages + SegmentationClass (train ids).

    Args:
        root: folder holding one sub-folder per domain (DWD layout).
        domain: domain name.
        split: ``train``, ``test`` or ``all``.
        transforms: optional ``f(image, mask) -> (image, mask)``.
        on_error: ``raise`` or ``skip`` (bad items dropped and listed in ``.problems``).
        verify_images: decode every image and mask at construction (default: only when skipping).
    """

    def __init__(self, root: str | os.PathLike, domain: str, split: str = "train",
                 transforms: Callable | None = None, on_error: str = "raise", verify_images: bool | None = None):
        super().__init__(transforms, on_error, verify_images)
        self.root, self.domain, self.split = Path(root), domain, split
        self.voc_root = voc.find_voc_root(self.root, domain)
        mask_dir = self.voc_root / "SegmentationClass"
        if not mask_dir.is_dir():
            raise DataError(mask_dir, f"segmentation masks folder is missing for domain {domain!r}")
        images = voc.list_images(self.voc_root / "JPEGImages")
        masks = voc.list_images(mask_dir)
        for image_id in split_ids(self.voc_root, split):
            if image_id not in images:
                self._report(Problem(str(self.voc_root / "JPEGImages" / f"{image_id}.jpg"), voc.MISSING_IMAGE,
                                     f"image file is missing (listed in {split} split)"))
                continue
            if image_id not in masks:
                self._report(Problem(str(mask_dir / f"{image_id}.png"), voc.MISSING_MASK, "mask file is missing"))
                continue
            item = _SegItem(image_id, self.voc_root / "JPEGImages" / images[image_id], mask_dir / masks[image_id],
                            map_ids=False)
            if self._verified(item):
                self._items.append(item)
        self._finish()


class CityscapesSegmentation(_SegmentationDataset):
    """Cityscapes fine annotations (``leftImg8bit`` + ``gtFine``), label ids mapped to the 19 train ids.

    Args:
        root: the Cityscapes folder (holding ``leftImg8bit`` and ``gtFine``).
        split: ``train``, ``val`` or ``test``.
        transforms: optional ``f(image, mask) -> (image, mask)``.
        on_error: ``raise`` or ``skip``.
        verify_images: decode every file at construction (default: only when skipping).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", transforms: Callable | None = None,
                 on_error: str = "raise", verify_images: bool | None = None):
        super().__init__(transforms, on_error, verify_images)
        self.root, self.split = Path(root), split
        img_root, gt_root = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for folder, pattern in ((img_root, "<city>/<name>_leftImg8bit.png"),
                                (gt_root, "<city>/<name>_gtFine_labelIds.png")):
            if not folder.is_dir():
                raise DataError(folder, f"Cityscapes folder is missing; expected {folder}/{pattern}")
        suffix = "_leftImg8bit.png"
        for city in sorted(p.name for p in img_root.iterdir() if p.is_dir()):
            for name in sorted(n for n in os.listdir(img_root / city) if n.endswith(suffix)):
                stem = name[: -len(suffix)]
                train_ids = gt_root / city / f"{stem}_gtFine_labelTrainIds.png"
                label_ids = gt_root / city / f"{stem}_gtFine_labelIds.png"
                if train_ids.is_file():
                    item = _SegItem(stem, img_root / city / name, train_ids, map_ids=False)
                elif label_ids.is_file():
                    item = _SegItem(stem, img_root / city / name, label_ids, map_ids=True)
                else:
                    self._report(Problem(str(label_ids), voc.MISSING_MASK, "label file is missing"))
                    continue
                if self._verified(item):
                    self._items.append(item)
        if not self._items and not self.problems:
            raise DataError(img_root, f"no *{suffix} images found under {img_root}/<city>/")
        self._finish()


class GTAVSegmentation(_SegmentationDataset):
    """GTAV (``images/`` + ``labels/`` in Cityscapes label ids), optionally restricted to a split.

    Args:
        root: the GTAV folder.
        split: None (every image), or ``train``/``val``/``test`` from ``split/<split>.txt`` or ``split.mat``.
        transforms: optional ``f(image, mask) -> (image, mask)``.
        on_error: ``raise`` or ``skip``.
        mismatch: image/label size mismatch policy: ``resize`` the label (nearest, reported as a warning),
            ``skip`` the pair (warning), or ``error``.
        verify_images: decode every file at construction (default: only when skipping).
        progress: show a progress bar while reading the file headers.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, transforms: Callable | None = None,
                 on_error: str = "raise", mismatch: str = "resize", verify_images: bool | None = None,
                 progress: bool = True):
        super().__init__(transforms, on_error, verify_images)
        if mismatch not in MISMATCH_POLICIES:
            raise ConfigError(f"mismatch must be one of {', '.join(MISMATCH_POLICIES)}, got {mismatch!r}")
        self.root, self.split, self.mismatch = Path(root), split, mismatch
        img_dir, lbl_dir = self.root / "images", self.root / "labels"
        for folder in (img_dir, lbl_dir):
            if not folder.is_dir():
                raise DataError(folder, f"GTAV folder is missing; expected {self.root}/images/<id>.png and "
                                        f"{self.root}/labels/<id>.png")
        images, labels = voc.list_images(img_dir), voc.list_images(lbl_dir)
        ids = sorted(images) if split is None else self._split_ids(split)
        for image_id in tqdm(ids, desc=f"gtav/{split or 'all'}", disable=None if progress else True, leave=False):
            self._add(image_id, img_dir, lbl_dir, images, labels)
        self._finish()

    def _split_ids(self, split: str) -> list[str]:
        txt, mat = self.root / "split" / f"{split}.txt", self.root / "split.mat"
        if txt.is_file():
            return voc.read_id_list(txt)
        if mat.is_file():
            from scipy.io import loadmat

            try:
                table = loadmat(mat)
            except Exception as exc:  # scipy raises several unrelated types for a bad file
                raise DataError(mat, f"split file cannot be read ({exc})") from None
            key = f"{split}Ids"
            if key not in table:
                keys = ", ".join(k for k in table if not k.startswith("__"))
                raise DataError(mat, f"has no {key!r} array; keys: {keys}")
            return [f"{int(v):05d}" for v in np.asarray(table[key]).ravel()]
        raise DataError(txt, f"split file is missing for split {split!r} (looked for {txt} and {mat})")

    def _add(self, image_id, img_dir, lbl_dir, images, labels) -> None:
        if image_id not in images:
            self._report(Problem(str(img_dir / f"{image_id}.png"), voc.MISSING_IMAGE, "image file is missing"))
            return
        if image_id not in labels:
            self._report(Problem(str(lbl_dir / f"{image_id}.png"), voc.MISSING_MASK, "label file is missing"))
            return
        item = _SegItem(image_id, img_dir / images[image_id], lbl_dir / labels[image_id], map_ids=True)
        try:
            image_size, label_size = voc.read_image_size(item.image_path), voc.read_image_size(item.label_path)
        except DataError as exc:
            self._report(Problem(exc.path, voc.UNREADABLE_IMAGE, exc.problem))
            return
        if image_size != label_size:
            text = f"label is {label_size[0]}x{label_size[1]} but image is {image_size[0]}x{image_size[1]}"
            if self.mismatch == "error":
                self._report(Problem(str(item.label_path), voc.SIZE_MISMATCH, text))
                return
            if self.mismatch == "skip":
                self.problems.append(Problem(str(item.label_path), voc.SIZE_MISMATCH, text + "; pair skipped",
                                             "warning"))
                return
            self.problems.append(Problem(str(item.label_path), voc.SIZE_MISMATCH,
                                         text + "; label resized (nearest)", "warning"))
            item.resize_label = True
        if self._verified(item):
            self._items.append(item)
