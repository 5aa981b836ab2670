"""Source images and their twins as training items and batches (the data side of twin batching).

``TwinTrainSet`` serves a source training image or one of its generated twins by ``TwinItem``, with the
geometry (flip, crop) the sampler drew applied identically to both, so a twin's labels stay the source's
labels mapped through its crop-then-resize. ``TwinCollate`` lays a batch out as the B sources first and
their twins after them: ``domains`` holds 0 for sources and 1..K (the order of ``data.synth_domains``) for
twins; ``pairs[p] = (i, j)`` are batch positions of a source and its twin. ``ManifestTwins`` reads twins
of a source that is not in DWD layout (GTAV) straight from the manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from drsf_kit.data import voc
from drsf_kit.data.manifest import map_boxes, map_mask, read_manifests, row_path
from drsf_kit.data.paired import size_problem
from drsf_kit.errors import DataError


class TwinItem(NamedTuple):
    """One sampled source image, its twin (``twin=-1``: none) and the geometry both receive."""

    source: int  # index into the source training set
    twin: int  # index into the paired synthetic set, -1 when the image trains alone
    domain: int  # twin's domain id 1..K (0 when there is no twin)
    flip: bool  # horizontal flip, the same for both
    draws: tuple[float, float, float]  # uniform draws placing the crop (scale, x, y), the same for both
    # further (twin, domain) pairs from other pseudo-domains, for variants that fuse several per source
    extra: tuple[tuple[int, int], ...] = ()


# ------------------------------------------------------------------------------------------- geometry
def _resize(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    return F.interpolate(image[None], size=size_hw, mode="bilinear", align_corners=False)[0]


def crop_box(draws: tuple[float, float, float], width: int, height: int, min_scale: float = 1.0,
             size: Sequence[int] = ()) -> tuple[tuple[int, int, int, int] | None, bool]:
    """The pixel crop ``(x0, y0, x1, y1)`` the draws select (None: no crop) and whether it is resized back.

    ``size`` (h, w) gives a fixed-size crop kept at its resolution (segmentation recipes); otherwise a
    ``min_scale`` < 1 gives a random crop of side fraction in [min_scale, 1], resized back (scale jitter).
    """
    u_scale, u_x, u_y = draws
    if size:
        ch, cw = min(int(size[0]), height), min(int(size[1]), width)
        resize = False
    elif min_scale < 1.0:
        scale = min_scale + (1.0 - min_scale) * u_scale
        ch, cw = max(1, round(height * scale)), max(1, round(width * scale))
        resize = True
    else:
        return None, False
    x0, y0 = round(u_x * (width - cw)), round(u_y * (height - ch))
    return (x0, y0, x0 + cw, y0 + ch), resize


def apply_geometry(image: torch.Tensor, target: Any, task: str, flip: bool,
                   box: tuple[int, int, int, int] | None, resize: bool = False) -> tuple[torch.Tensor, Any]:
    """Crop (pixel box, resized back to the full size when ``resize``) and flip an image and its labels alike."""
    height, width = image.shape[-2:]
    if box is not None:
        out_size = (width, height) if resize else (box[2] - box[0], box[3] - box[1])
        image = _resize(image[:, box[1] : box[3], box[0] : box[2]], (out_size[1], out_size[0]))
        if task == "det":
            boxes, keep = map_boxes(target["boxes"], box, out_size)
            target = {**target, "boxes": boxes, "labels": target["labels"][keep],
                      "difficult": target["difficult"][keep]}
        else:
            target = map_mask(target, box, out_size)
        width = out_size[0]
    if flip:
        image = image.flip(-1)
        if task == "det":
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes}
        else:
            target = target.flip(-1)
    return image, target


def _to_frame(image: torch.Tensor, target: Any, task: str, crop, size: tuple[int, int]):
    """Bring a source image into its twin's frame (the manifest's crop, then resize to ``size`` W,H)."""
    height, width = image.shape[-2:]
    box = crop if crop is not None else (0, 0, width, height)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    image = _resize(image[:, max(0, y0) : y1, max(0, x0) : x1], (size[1], size[0]))
    if task == "det":
        boxes, keep = map_boxes(target["boxes"], box, size)
        target = {**target, "boxes": boxes, "labels": target["labels"][keep], "difficult": target["difficult"][keep]}
    else:
        target = map_mask(target, box, size)
    return image, target


# ------------------------------------------------------------------------------------------- dataset
class TwinTrainSet(Dataset):
    """Source training images and their generated twins, indexed by ``TwinItem``.

    Args:
        source: the source training set (``(image, target)`` items; ``.ids`` lists the image ids).
        task: ``det`` or ``seg``.
        paired: a ``PairedSynthetic`` (None for source-only training).
        synth_domains: pseudo-domain names in domain-id order (id = position + 1).
    """

    def __init__(self, source: Dataset, task: str, paired: Any | None = None, synth_domains: Sequence[str] = (),
                 crop_min_scale: float = 1.0, crop_size: Sequence[int] = ()):
        self.source, self.task, self.paired = source, task, paired
        self.crop_min_scale, self.crop_size = float(crop_min_scale), tuple(crop_size)
        self.synth_domains = tuple(synth_domains)
        self.domain_ids = {name: i + 1 for i, name in enumerate(self.synth_domains)}
        self.twin_table: list[dict[int, list[int]]] = []
        for image_id in source.ids:
            twins = paired.twins(image_id) if paired is not None else {}
            self.twin_table.append({self.domain_ids[d]: v for d, v in twins.items() if d in self.domain_ids})

    def __len__(self) -> int:
        return len(self.source)

    def coverage(self) -> float:
        """Fraction of source images with at least one twin."""
        return sum(bool(t) for t in self.twin_table) / max(1, len(self.twin_table))

    def _seg_target(self, target: Any) -> torch.Tensor:
        return target["mask"] if isinstance(target, dict) else target

    def __getitem__(self, item: TwinItem) -> dict:
        image, target = self.source[item.source]
        image_id = self.source.ids[item.source]
        if self.task == "seg":
            target = self._seg_target(target)
        out = {"source_id": image_id, "domain": item.domain, "twin": None}
        if item.twin >= 0:
            twin_image, twin_target = self.paired[item.twin]
            if self.task == "seg":
                twin_target = self._seg_target(twin_target)
            row = self.paired.rows[item.twin]
            twin_hw = tuple(twin_image.shape[-2:])
            if row.get("crop") is not None or twin_hw != tuple(image.shape[-2:]):
                # a twin made from a crop: the source follows it so the pair stays aligned pixel by pixel
                image, target = _to_frame(image, target, self.task, row.get("crop"), (twin_hw[1], twin_hw[0]))
        height, width = image.shape[-2:]
        box, resize = crop_box(item.draws, width, height, self.crop_min_scale, self.crop_size)
        if item.twin >= 0:
            twin_image, twin_target = apply_geometry(twin_image, twin_target, self.task, item.flip, box, resize)
            out["twin"] = (twin_image, twin_target)
        if item.extra:
            out["extra_twins"] = self._extra_twins(item, twin_hw, box, resize)
        out["source"] = apply_geometry(image, target, self.task, item.flip, box, resize)
        return out


    def _extra_twins(self, item: TwinItem, frame_hw: tuple, box, resize: bool) -> list:
        """(domain, (image, target)) of the further twins that share the first twin's frame.

        A further twin cut from another crop of the source would not align with it pixel by pixel, so
        it is left out rather than resampled.
        """
        first_crop = self.paired.rows[item.twin].get("crop")
        out = []
        for twin, domain in item.extra:
            image, target = self.paired[twin]
            if self.paired.rows[twin].get("crop") != first_crop or tuple(image.shape[-2:]) != frame_hw:
                continue
            if self.task == "seg":
                target = self._seg_target(target)
            out.append((domain, apply_geometry(image, target, self.task, item.flip, box, resize)))
        return out


@dataclass
class TwinBatch:
    """A collated training batch: sources first, then their twins."""

    images: Any  # det: list of [3,H,W]; seg: [N,3,H,W]
    targets: Any  # det: list of dicts (boxes, labels); seg: [N,H,W] long
    domains: torch.Tensor  # [N] long, 0 = source, 1..K pseudo-domains
    pairs: torch.Tensor  # [P,2] long, batch positions (source, twin)
    source_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.domains.numel())

    def to(self, device: torch.device | str) -> "TwinBatch":
        """The batch on ``device`` (non-blocking copies)."""
        if isinstance(self.images, torch.Tensor):
            images = self.images.to(device, non_blocking=True)
            targets = self.targets.to(device, non_blocking=True)
        else:
            images = [im.to(device, non_blocking=True) for im in self.images]
            targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                        for k, v in t.items()} for t in self.targets]
        return TwinBatch(images, targets, self.domains.to(device), self.pairs.to(device), self.source_ids)

    def pin_memory(self) -> "TwinBatch":
        """The batch in page-locked memory (``DataLoader(pin_memory=True)`` calls this on custom types),
        so ``to(device, non_blocking=True)`` really overlaps the copy with compute."""
        def pin(v):
            return v.pin_memory() if isinstance(v, torch.Tensor) else v

        if isinstance(self.images, torch.Tensor):
            images, targets = pin(self.images), pin(self.targets)
        else:
            images = [pin(im) for im in self.images]
            targets = [{k: pin(v) for k, v in t.items()} for t in self.targets]
        return TwinBatch(images, targets, pin(self.domains), pin(self.pairs), self.source_ids)


def _det_target(target: dict) -> dict:
    return {"boxes": target["boxes"].reshape(-1, 4).float(), "labels": target["labels"].long()}


class TwinCollate:
    """``collate_fn`` turning the items of one step into a ``TwinBatch`` (picklable for workers)."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, items: list[dict]) -> TwinBatch:
        sources = [it["source"] for it in items]
        twins = [(i, it["twin"], it["domain"]) for i, it in enumerate(items) if it["twin"] is not None]
        # further twins (several pseudo-domains per source) follow the first ones; none for one-twin variants
        twins += [(i, t, d) for i, it in enumerate(items) for d, t in it.get("extra_twins", ())]
        images = [s[0] for s in sources] + [t[1][0] for t in twins]
        targets = [s[1] for s in sources] + [t[1][1] for t in twins]
        domains = torch.tensor([0] * len(sources) + [t[2] for t in twins], dtype=torch.long)
        b = len(sources)
        pairs = torch.tensor([[i, b + p] for p, (i, _, _) in enumerate(twins)], dtype=torch.long).reshape(-1, 2)
        ids = [it["source_id"] for it in items]
        if self.task == "det":
            return TwinBatch(images, [_det_target(t) for t in targets], domains, pairs, ids)
        size = tuple(images[0].shape[-2:])
        # masks are stacked, so every image of the batch is brought to the first one's size
        images = torch.stack([_resize(im, size) for im in images])
        masks = []
        for m in targets:
            if tuple(m.shape[-2:]) != size:
                m = map_mask(m, None, (size[1], size[0]))
            masks.append(m.long())
        return TwinBatch(images, torch.stack(masks), domains, pairs, ids)


class ManifestTwins(Dataset):
    """Twins of a segmentation source that is not in DWD layout (GTAV), read straight from manifests.

    Offers what ``TwinTrainSet`` uses of ``PairedSynthetic``: ``rows``, ``twins(source_id)`` and
    ``(image, mask)`` items with the source mask mapped through the row's crop-then-resize.
    """

    def __init__(self, source: Dataset, synth_root, source_domain: str, domains: Sequence[str]):
        self.source, self.rows, self._source_of = source, [], []
        self._twins: dict[str, dict[str, list[int]]] = {}

        for row in read_manifests(synth_root):
            if row["source_domain"] != source_domain or row["domain"] not in domains:
                continue
            try:
                j = source.index_of(row["source_id"])
            except KeyError:
                continue  # a twin of an image outside the training split
            problem = size_problem(row, voc.read_image_size(row_path(row)))  # before training, not when drawn
            if problem:
                raise DataError(row_path(row), problem)
            self._twins.setdefault(row["source_id"], {}).setdefault(row["domain"], []).append(len(self.rows))
            self.rows.append(row)
            self._source_of.append(j)

    def __len__(self) -> int:
        return len(self.rows)

    def twins(self, source_id: str) -> dict[str, list[int]]:
        """Item indices of the twins of ``source_id`` by pseudo-domain."""
        return {d: list(v) for d, v in self._twins.get(source_id, {}).items()}

    def __getitem__(self, i: int):
        row = self.rows[i]
        arr = voc.load_rgb(row_path(row))
        mask = map_mask(self.source.load_mask(self._source_of[i]), row.get("crop"), (arr.shape[1], arr.shape[0]))
        return voc.rgb_to_tensor(arr), mask
