"""Semantic segmentation metrics: a confusion-matrix meter giving mIoU and pixel accuracy.

The confusion matrix has ground truth on the rows and prediction on the columns; pixels whose target
is ``ignore_index`` are not counted. IoU of class c = TP / (TP + FP + FN). A class that appears in
neither the ground truth nor the prediction of any counted pixel has no IoU (``None``): it is left
out of the mean and listed in ``absent_classes``. A class that only one side contains has IoU 0 and
counts.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from drsf_kit.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_SEG_CLASSES
from drsf_kit.errors import ConfigError, DataError


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(name, f"cannot be read as a tensor ({exc})") from None


class SegmentationMeter:
    """Accumulate a confusion matrix over batches; ``compute()`` gives mIoU, pixel accuracy and IoUs."""

    def __init__(
        self,
        num_classes: int = NUM_SEG_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = CITYSCAPES_CLASSES,
    ):
        """Args: number of classes, the target value to skip, and one name per class (None = "0", "1", ...)."""
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is None or (class_names is CITYSCAPES_CLASSES and num_classes != len(CITYSCAPES_CLASSES)):
            class_names = [str(c) for c in range(num_classes)]
        if len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class names given for {num_classes} classes")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(f"ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.num_images = 0

    def _where(self, image_ids: Sequence | None, index: int | None) -> str:
        if image_ids is not None and index is not None and index < len(image_ids):
            return f"image {image_ids[index]}"
        if image_ids is not None and len(image_ids) == 1:
            return f"image {image_ids[0]}"
        return "segmentation batch" if index is None else f"segmentation batch item {index}"

    def _labels(self, pred: torch.Tensor, image_ids) -> torch.Tensor:
        """Turn logits [N,C,H,W] or labels [H,W] / [N,H,W] into integer labels [N,H,W]."""
        if pred.dim() == 4:
            if pred.shape[1] != self.num_classes:
                raise DataError(
                    self._where(image_ids, None),
                    f"logits have {pred.shape[1]} channels, expected num_classes={self.num_classes}",
                )
            return pred.argmax(dim=1)
        if pred.dim() not in (2, 3):
            raise DataError(
                self._where(image_ids, None),
                f"prediction has shape {list(pred.shape)}; expected labels [H,W] / [N,H,W] or logits [N,C,H,W]",
            )
        if pred.is_floating_point():
            # float labels are almost always logits missing their batch dimension: say so
            raise DataError(
                self._where(image_ids, None),
                f"prediction of shape {list(pred.shape)} is floating point; pass integer labels or logits [N,C,H,W]",
            )
        return pred.long() if pred.dim() == 3 else pred.long().unsqueeze(0)

    def update(self, pred, target, image_ids: Sequence | None = None) -> None:
        """Add a batch: ``pred`` labels [H,W]/[N,H,W] or logits [N,C,H,W]; ``target`` [H,W]/[N,H,W].

        ``image_ids`` (one per image) make every error message name the offending image.
        """
        pred = self._labels(_as_tensor(pred, self._where(image_ids, None)), image_ids)
        target = _as_tensor(target, self._where(image_ids, None))
        if target.is_floating_point():
            raise DataError(self._where(image_ids, None), "target is floating point; expected integer class ids")
        target = target.long()
        if target.dim() == 2:
            target = target.unsqueeze(0)
        if target.dim() != 3 or pred.shape != target.shape:
            bad = None
            if target.dim() == 3 and pred.shape[0] == target.shape[0]:
                bad = next((i for i in range(pred.shape[0]) if pred[i].shape != target[i].shape), None)
            raise DataError(
                self._where(image_ids, bad),
                f"prediction shape {list(pred.shape)} does not match target shape {list(target.shape)}",
            )
        if image_ids is not None and len(image_ids) != target.shape[0]:
            raise DataError(self._where(None, None), f"{len(image_ids)} image ids for a batch of {target.shape[0]}")
        pred = pred.to(target.device)
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= self.num_classes))
        if bad_target.any():
            i = int(bad_target.flatten(1).any(1).nonzero()[0])
            values = sorted(set(target[i][bad_target[i]].unique().tolist()))[:5]
            raise DataError(
                self._where(image_ids, i),
                f"target holds values {values} outside 0..{self.num_classes - 1} and ignore {self.ignore_index}",
            )
        bad_pred = valid & ((pred < 0) | (pred >= self.num_classes))
        if bad_pred.any():
            i = int(bad_pred.flatten(1).any(1).nonzero()[0])
            values = sorted(set(pred[i][bad_pred[i]].unique().tolist()))[:5]
            raise DataError(
                self._where(image_ids, i), f"prediction holds values {values} outside 0..{self.num_classes - 1}"
            )
        # one bincount over (target, pred) pairs: row = ground truth, column = prediction
        flat = target[valid] * self.num_classes + pred[valid]
        counts = torch.bincount(flat, minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes).cpu()
        self.num_images += target.shape[0]

    def compute(self) -> dict:
        """Return ``miou``, ``pixel_acc``, ``iou`` {class: float or None}, ``absent_classes``, ``confusion``."""
        conf = self.confusion.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        iou = {
            name: (float(tp[c] / union[c]) if present[c] else None) for c, name in enumerate(self.class_names)
        }
        total = conf.sum()
        return {
            "miou": float((tp[present] / union[present]).mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "iou": iou,
            "absent_classes": [name for c, name in enumerate(self.class_names) if not present[c]],
            "confusion": self.confusion.tolist(),
            "num_images": int(self.num_images),
            "num_pixels": int(total),
        }


def evaluate_segmentation(
    pairs: Iterable,
    num_classes: int = NUM_SEG_CLASSES,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = CITYSCAPES_CLASSES,
    progress: bool = True,
) -> dict:
    """Score an iterable of ``(pred, target)`` or ``(pred, target, image_ids)`` and return ``compute()``.

    Args:
        pairs: batches as accepted by ``SegmentationMeter.update``; a third item names the image(s).
        num_classes: number of classes (19 Cityscapes train ids by default).
        ignore_index: target value that is not scored.
        class_names: one name per class.
        progress: show a tqdm bar.
    """
    meter = SegmentationMeter(num_classes, ignore_index, class_names)
    total = len(pairs) if hasattr(pairs, "__len__") else None
    for item in tqdm(pairs, total=total, desc="mIoU", disable=not progress, leave=False):
        if len(item) == 3:
            pred, target, ids = item
            ids = [ids] if isinstance(ids, (str, int)) else list(ids)
            meter.update(pred, target, image_ids=ids)
        elif len(item) == 2:
            meter.update(item[0], item[1])
        else:
            raise DataError("segmentation pairs", f"expected (pred, target[, image_ids]) items, got {len(item)} items")
    return meter.compute()
