"""Detection metrics: VOC2007 11-point mAP@0.5 (written here) and COCO-style AP (pycocotools).

Two metrics, always reported under their own names so they are never confused:

- ``map50_voc07``: the Pascal VOC2007 devkit rule. Per class, detections of all images are sorted by
  descending score (a stable sort, so ties keep input order) and matched greedily: a detection takes
  the ground-truth (GT) box of its class with the highest IoU in its image; if that IoU is >= the
  threshold and the box is *difficult*, the detection is ignored (neither TP nor FP); if the box is
  not difficult and still free it is a TP, if it was already taken the detection is a duplicate and a
  FP; below the threshold it is a FP. Difficult boxes are not counted as positives. AP is the mean,
  over recall thresholds 0, 0.1, ..., 1.0, of the maximum precision at recall >= threshold.
  Coordinates are continuous: IoU uses ``(x2 - x1) * (y2 - y1)`` with no VOC "+1 pixel" term, the same
  convention as pycocotools, so both metrics see the same overlaps.
- ``ap50_coco`` / ``ap_coco`` / ``ap75_coco``: pycocotools' COCOeval (101-point interpolation, at most
  ``max_detections`` detections per image and class, area range "all"). Difficult boxes are passed as
  ``iscrowd=1``, which COCOeval ignores: detections matched to them are neither TP nor FP and they are
  not positives. One difference remains, inherent to COCO crowd regions: a crowd box's overlap with a
  detection is intersection / detection area, so a detection lying inside a large difficult box is
  ignored by COCO while VOC07 would call it a FP.

A class without (non-difficult) GT has AP NaN in both metrics and is left out of the means; its name
is listed under ``classes_without_gt``.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.calibration import check_probabilities, expected_calibration_error

METRICS = ("voc07", "coco", "ece")
# VOC2007's recall thresholds; k / 10 (not 0.1 * k) so that e.g. a recall of exactly 3/10 reaches 0.3.
VOC07_RECALL_THRESHOLDS = np.arange(11) / 10.0


# --------------------------------------------------------------------------- inputs
def _to_numpy(value: Any, image_id: str, field: str, dtype) -> np.ndarray:
    """Convert a tensor / array / list to a numpy array, naming the image and field on failure."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"image {image_id}", f"{field} cannot be read as numbers ({exc})") from None


def _check_boxes(boxes: np.ndarray, image_id: str, who: str) -> np.ndarray:
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"image {image_id}", f"{who} boxes have shape {list(boxes.shape)}, expected [N, 4] xyxy")
    if not np.isfinite(boxes).all():
        raise DataError(f"image {image_id}", f"{who} boxes contain NaN or inf")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad.size:
        raise DataError(
            f"image {image_id}",
            f"{who} box {int(bad[0])} {boxes[bad[0]].tolist()} has x2 < x1 or y2 < y1 (boxes must be xyxy)",
        )
    return boxes


def _check_labels(labels: np.ndarray, n: int, num_classes: int | None, image_id: str, who: str) -> np.ndarray:
    labels = labels.reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"image {image_id}", f"{who} have {n} boxes but {labels.shape[0]} labels")
    if labels.size and not np.isfinite(labels).all():
        raise DataError(f"image {image_id}", f"{who} labels contain NaN or inf")
    if labels.size and (labels != np.round(labels)).any():
        raise DataError(f"image {image_id}", f"{who} labels must be integers, got {labels.tolist()}")
    labels = labels.astype(np.int64)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((labels < 1) | (labels > upper))
    if bad.size:
        allowed = f"1..{num_classes}" if num_classes is not None else ">= 1"
        raise DataError(
            f"image {image_id}",
            f"{who} label {int(labels[bad[0]])} is outside {allowed} (labels are 1-based, 0 = background)",
        )
    return labels


def _by_image(items: Mapping | Sequence, who: str, positional_ids: Sequence[str] | None = None) -> dict[str, Mapping]:
    """Accept ``{image_id: dict}`` or a sequence of dicts; keys become str.

    In a sequence either every dict carries ``image_id`` or none does; then images are matched by
    position, as torchvision's detection references do (``zip(targets, outputs)``): entry ``i`` gets
    ``positional_ids[i]`` (the ground truth's ids, in order) or, without them, the id ``str(i)``.
    """
    if isinstance(items, Mapping):
        for k, v in items.items():
            if not isinstance(v, Mapping):
                raise DataError(f"image {k}", f"the {who} entry must be a dict, got {type(v).__name__}")
        return {str(k): v for k, v in items.items()}
    items = list(items)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DataError(f"{who}[{i}]", f"each entry must be a dict, got {type(item).__name__}")
    with_id = [i for i, item in enumerate(items) if "image_id" in item]
    if not items:  # nothing predicted anywhere: every image's boxes are misses
        return {}
    if not with_id:  # matched by position
        ids = [str(i) for i in range(len(items))] if positional_ids is None else list(positional_ids)
        if len(ids) != len(items):
            raise DataError(who, f"{len(items)} entries without 'image_id' for {len(ids)} ground-truth images: "
                                 "matching by position needs one entry per image, in the same order")
        return dict(zip(ids, items))
    if len(with_id) != len(items):
        first = next(i for i, item in enumerate(items) if "image_id" not in item)
        raise DataError(f"{who}[{first}]", "lacks 'image_id' while other entries carry one (give all or none)")
    out: dict[str, Mapping] = {}
    for item in items:
        image_id = item["image_id"]
        if hasattr(image_id, "item"):  # torchvision datasets give a 0-d tensor
            image_id = image_id.item()
        image_id = str(image_id)
        if image_id in out:
            raise DataError(f"image {image_id}", f"appears more than once in the {who}")
        out[image_id] = item
    return out


def normalize_targets(targets: Mapping | Sequence, num_classes: int | None = None) -> dict[str, dict]:
    """Validate ground truth; return ``{image_id: {"boxes", "labels", "difficult"}}`` as numpy arrays."""
    out = {}
    for image_id, t in _by_image(targets, "targets").items():
        if "boxes" not in t or "labels" not in t:
            raise DataError(f"image {image_id}", "target needs 'boxes' and 'labels'")
        boxes = _check_boxes(_to_numpy(t["boxes"], image_id, "target boxes", np.float64), image_id, "target")
        labels = _check_labels(
            _to_numpy(t["labels"], image_id, "target labels", np.float64), len(boxes), num_classes, image_id, "target"
        )
        if t.get("difficult") is None:
            difficult = np.zeros(len(boxes), dtype=bool)
        else:
            difficult = _to_numpy(t["difficult"], image_id, "target difficult", bool).reshape(-1)
            if difficult.shape[0] != len(boxes):
                raise DataError(
                    f"image {image_id}", f"target has {len(boxes)} boxes but {difficult.shape[0]} difficult flags"
                )
        out[image_id] = {"boxes": boxes, "labels": labels, "difficult": difficult}
    return out


def normalize_predictions(
    predictions: Mapping | Sequence, targets: Mapping[str, Any], num_classes: int | None = None
) -> dict[str, dict]:
    """Validate predictions against normalised ``targets``; images without a prediction get empty arrays.

    A sequence of predictions without ``image_id`` is matched to ``targets`` by position.
    """
    preds = _by_image(predictions, "predictions", positional_ids=list(targets))
    out = {}
    for image_id, p in preds.items():
        if image_id not in targets:
            raise DataError(f"image {image_id}", "has a prediction but no ground truth (unknown image id)")
        missing = [k for k in ("boxes", "scores", "labels") if k not in p]
        if missing:
            raise DataError(f"image {image_id}", f"prediction lacks {missing} (needs boxes, scores, labels)")
        boxes = _check_boxes(_to_numpy(p["boxes"], image_id, "predicted boxes", np.float64), image_id, "predicted")
        scores = _to_numpy(p["scores"], image_id, "scores", np.float64).reshape(-1)
        if scores.shape[0] != len(boxes):
            raise DataError(f"image {image_id}", f"prediction has {len(boxes)} boxes but {scores.shape[0]} scores")
        if not np.isfinite(scores).all():
            raise DataError(f"image {image_id}", "prediction scores contain NaN or inf")
        labels = _check_labels(
            _to_numpy(p["labels"], image_id, "predicted labels", np.float64), len(boxes), num_classes, image_id,
            "predictions",
        )
        out[image_id] = {"boxes": boxes, "scores": scores, "labels": labels}
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
    # Images with ground truth but no prediction still count: all their boxes are misses.
    return {image_id: out.get(image_id, empty) for image_id in targets}


# --------------------------------------------------------------------------- matching
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes in continuous coordinates (no +1 pixel)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_detections(pred: Mapping, target: Mapping, iou_threshold: float = 0.5) -> np.ndarray:
    """VOC matching of one image's detections: 1 = TP, 0 = FP, -1 = ignored (hit a difficult box).

    Detections are taken by descending score (stable) within each class; the returned array is in
    the input order of ``pred``.
    """
    status = np.zeros(len(pred["scores"]), dtype=np.int64)
    for cls in np.unique(pred["labels"]):
        det_idx = np.flatnonzero(pred["labels"] == cls)
        det_idx = det_idx[np.argsort(-pred["scores"][det_idx], kind="mergesort")]
        gt_idx = np.flatnonzero(target["labels"] == cls)
        if gt_idx.size == 0:
            continue  # every detection of a class absent from the image is a FP
        ious = box_iou(pred["boxes"][det_idx], target["boxes"][gt_idx])
        difficult = target["difficult"][gt_idx]
        taken = np.zeros(gt_idx.size, dtype=bool)
        for row, d in enumerate(det_idx):
            best = int(np.argmax(ious[row]))
            if ious[row, best] < iou_threshold:
                continue  # FP: no box of its class overlaps enough
            if difficult[best]:
                status[d] = -1
            elif not taken[best]:
                taken[best] = True
                status[d] = 1
            # else: a duplicate detection of a box already found stays a FP
    return status


def voc07_ap(tp: np.ndarray, num_positives: int) -> float:
    """11-point interpolated AP from TP flags (1/0) sorted by descending score; NaN without positives."""
    if num_positives == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    precision = tp_cum / np.arange(1, tp.size + 1)
    recall = tp_cum / num_positives
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in VOC07_RECALL_THRESHOLDS]
    return float(np.mean(points))


def _voc07(preds: dict, targets: dict, statuses: dict, num_classes: int) -> dict[int, float]:
    """Per-class VOC07 AP from per-image match statuses (images in ``targets`` order)."""
    aps = {}
    for cls in range(1, num_classes + 1):
        scores, flags = [], []
        num_pos = 0
        for image_id, t in targets.items():
            num_pos += int(((t["labels"] == cls) & ~t["difficult"]).sum())
            keep = (preds[image_id]["labels"] == cls) & (statuses[image_id] >= 0)
            scores.append(preds[image_id]["scores"][keep])
            flags.append(statuses[image_id][keep])
        scores_all, flags_all = np.concatenate(scores), np.concatenate(flags)
        order = np.argsort(-scores_all, kind="mergesort")
        aps[cls] = voc07_ap(flags_all[order], num_pos)
    return aps


# --------------------------------------------------------------------------- COCO (pycocotools)
def _coco(preds: dict, targets: dict, num_classes: int, max_detections: int) -> dict:
    """COCO-style AP, AP50, AP75 and per-class AP50 from pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": i + 1} for i in range(len(targets))]
    categories = [{"id": k} for k in range(1, num_classes + 1)]
    gt_anns, dt_anns = [], []
    for img, image_id in zip(images, targets):
        t, p = targets[image_id], preds[image_id]
        for box, label, diff in zip(t["boxes"], t["labels"], t["difficult"]):
            # ids start at 1: COCOeval uses 0 to mean "unmatched"
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": img["id"], "category_id": int(label),
                            "bbox": xywh(box), "area": float((box[2] - box[0]) * (box[3] - box[1])),
                            "iscrowd": int(diff)})
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": img["id"], "category_id": int(label),
                            "bbox": xywh(box), "score": float(score),
                            "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        # Built directly rather than via loadRes, which cannot take an empty detection list.
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_detections]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    def clean(x: float) -> float:
        return float("nan") if x < 0 else float(x)  # COCOeval writes -1 where a value is undefined

    # precision[T, R, K, A, M]: IoU 0.5 is T=0, area "all" is A=0, the largest maxDets is M=-1.
    # Per-class AP50 is the mean over recall thresholds, exactly as COCOeval.summarize averages.
    prec = ev.eval["precision"][0, :, :, 0, -1]
    per_class = {}
    for k in range(num_classes):
        valid = prec[:, k][prec[:, k] > -1]
        per_class[k + 1] = float(valid.mean()) if valid.size else float("nan")
    return {"ap": clean(ev.stats[0]), "ap50": clean(ev.stats[1]), "ap75": clean(ev.stats[2]), "per_class": per_class}


# --------------------------------------------------------------------------- entry point
def evaluate_detections(
    predictions: Mapping | Sequence,
    targets: Mapping | Sequence,
    class_names: Sequence[str],
    metrics: Iterable[str] = ("voc07", "coco"),
    iou_threshold: float = 0.5,
    *,
    max_detections: int = 100,
    ece_bins: int = 10,
) -> dict:
    """Score detections with VOC2007 11-point AP and/or COCO-style AP (see the module docstring).

    Args:
        predictions: ``{image_id: {"boxes" [N,4] xyxy, "scores" [N], "labels" [N] 1-based}}`` or a
            sequence of such dicts (torchvision's model outputs); tensors, arrays or lists. Dicts without
            ``image_id`` are matched to ``targets`` by position (one per image, same order).
        targets: the same for ground truth (``boxes``, ``labels``, optional ``difficult`` and
            ``image_id``); a sequence without ``image_id`` numbers its images 0, 1, ...
        class_names: label k is ``class_names[k - 1]``.
        metrics: any of ``"voc07"``, ``"coco"``, ``"ece"``.
        iou_threshold: the VOC07 (and ECE) match threshold; COCO's AP50 is always at 0.5.
        max_detections: COCOeval's per-image, per-class cap (COCO's standard 100); VOC07 has none.
        ece_bins: number of equal-width confidence bins for ``ece``.

    Returns:
        A JSON-ready dict: ``map50_voc07``, ``ap50_voc07`` {class: AP}, ``ap50_coco``, ``ap_coco``,
        ``ap75_coco``, ``ap50_coco_per_class``, ``ece`` (those asked for), plus ``num_images``,
        ``num_instances`` {class: non-difficult GT count}, ``num_difficult``, ``num_detections``,
        ``classes_without_gt`` and ``iou_threshold``.
    """
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ConfigError(f"unknown detection metric(s) {unknown}; valid: {', '.join(METRICS)}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    class_names = list(class_names)
    num_classes = len(class_names)
    gts = normalize_targets(targets, num_classes)
    preds = normalize_predictions(predictions, gts, num_classes)

    num_instances = {name: 0 for name in class_names}
    for t in gts.values():
        for label in t["labels"][~t["difficult"]]:
            num_instances[class_names[label - 1]] += 1
    result: dict[str, Any] = {
        "num_images": len(gts),
        "num_instances": num_instances,
        "num_difficult": int(sum(int(t["difficult"].sum()) for t in gts.values())),
        "num_detections": int(sum(len(p["scores"]) for p in preds.values())),
        "classes_without_gt": [name for name, n in num_instances.items() if n == 0],
        "iou_threshold": float(iou_threshold),
    }
    statuses = None
    if "voc07" in metrics or "ece" in metrics:
        statuses = {i: match_detections(preds[i], gts[i], iou_threshold) for i in gts}
    if "voc07" in metrics:
        aps = _voc07(preds, gts, statuses, num_classes)
        per_class = {class_names[k - 1]: v for k, v in aps.items()}
        result["ap50_voc07"] = per_class
        result["map50_voc07"] = _nanmean(per_class.values())
    if "coco" in metrics:
        coco = _coco(preds, gts, num_classes, max_detections)
        result["ap50_coco"], result["ap_coco"], result["ap75_coco"] = coco["ap50"], coco["ap"], coco["ap75"]
        result["ap50_coco_per_class"] = {class_names[k - 1]: v for k, v in coco["per_class"].items()}
        result["coco_max_detections"] = int(max_detections)
    if "ece" in metrics:
        check_probabilities(preds)
        scores, correct = _scores_and_correct(preds, statuses)
        result["ece"] = expected_calibration_error(scores, correct, n_bins=ece_bins)
        result["ece_bins"] = int(ece_bins)
    return result


def _scores_and_correct(preds: dict, statuses: dict) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate scores and TP flags over images, leaving out detections on difficult boxes."""
    scores = [preds[i]["scores"][statuses[i] >= 0] for i in statuses]
    correct = [statuses[i][statuses[i] >= 0] == 1 for i in statuses]
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(correct)


def _nanmean(values: Iterable[float]) -> float:
    """Mean over the values that are not NaN; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def detection_ece(
    predictions: Mapping | Sequence,
    targets: Mapping | Sequence,
    n_bins: int = 10,
    iou: float = 0.5,
    num_classes: int | None = None,
) -> float:
    """Expected calibration error of detections: confidence = score, correct = TP at ``iou``.

    Args:
        predictions: as for ``evaluate_detections`` (``boxes``, ``scores``, ``labels`` per image).
        targets: ground truth per image (``boxes``, ``labels``, optional ``difficult``).
        n_bins: number of equal-width confidence bins on [0, 1].
        iou: the IoU a detection needs with a box of its class to count as correct.
        num_classes: when given, labels outside 1..num_classes raise ``DataError``.
    """
    gts = normalize_targets(targets, num_classes)
    preds = normalize_predictions(predictions, gts, num_classes)
    check_probabilities(preds)
    scores, correct = [], []
    for image_id in gts:
        status = match_detections(preds[image_id], gts[image_id], iou)
        scores.append(preds[image_id]["scores"][status >= 0])
        correct.append(status[status >= 0] == 1)
    if not scores:
        return float("nan")
    return expected_calibration_error(np.concatenate(scores), np.concatenate(correct), n_bins)
