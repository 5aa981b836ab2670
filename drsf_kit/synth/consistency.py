"""Layout consistency of a twin with its source, in [0, 1].

A twin may change colour, light and weather but must keep the objects where the labels say they are.
The score is the Pearson correlation of gradient magnitudes of log intensity of the source (mapped
through the twin's crop and resize) and the twin, inside the labelled boxes, clipped to [0, 1].
Correlation ignores a global gain on the gradients and the log turns darkening into an offset, so a
night twin with intact edges still scores high, while a twin whose objects moved or vanished scores
low. With no boxes (or boxes too small to
measure) the whole image is used. Both images are reduced first (area average) so sensor-like noise
and rain streaks do not dominate the gradients.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.data.manifest import map_boxes
from drsf_kit.synth.geometry import crop_resize_image

# Longer side (pixels) of the images the score is computed on.
WORK_SIDE = 160
# Fewer box pixels than this at the working size and the whole image is used instead.
MIN_REGION_PIXELS = 64


def gradient_magnitude(gray: np.ndarray) -> np.ndarray:
    """Central-difference gradient magnitude of a float [H, W] image (edges replicated)."""
    p = np.pad(gray, 1, mode="edge")
    gx = p[1:-1, 2:] - p[1:-1, :-2]
    gy = p[2:, 1:-1] - p[:-2, 1:-1]
    return np.sqrt(gx * gx + gy * gy)


# Offset inside the log: keeps the gradients of near-black (noisy) pixels from exploding.
LOG_EPS = 0.05


def _log_gray(image, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    small = image.convert("L").resize(size, Image.BOX)
    return np.log(np.asarray(small, dtype=np.float32) / 255.0 + LOG_EPS)


def layout_consistency(source, twin, boxes=None, crop: list[int] | None = None) -> float:
    """Score in [0, 1] of how well ``twin`` (PIL) keeps the layout of ``source`` (PIL).

    Args:
        source: the source image.
        twin: the generated image; its size is the twin's ``size``.
        boxes: source boxes (xyxy pixels) whose insides are compared; None or empty = whole image.
        crop: the twin's crop in source pixels (None = whole source).
    """
    size = list(twin.size)
    mapped = crop_resize_image(source, crop, size)
    scale = min(1.0, WORK_SIDE / max(size))
    work = (max(8, round(size[0] * scale)), max(8, round(size[1] * scale)))
    ga = gradient_magnitude(_log_gray(mapped, work))
    gb = gradient_magnitude(_log_gray(twin, work))
    region = np.ones(ga.shape, bool)
    if boxes is not None and len(boxes):
        twin_boxes, _ = map_boxes(np.asarray(boxes), crop, size, source.size)
        box_mask = np.zeros(ga.shape, bool)
        sx, sy = work[0] / size[0], work[1] / size[1]
        for x0, y0, x1, y1 in twin_boxes:
            box_mask[int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = True
        if box_mask.sum() >= MIN_REGION_PIXELS:
            region = box_mask
    a, b = ga[region].astype(np.float64), gb[region].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom < 1e-12:
        return 0.0  # a flat region in either image: no layout evidence
    return float(np.clip((a * b).sum() / denom, 0.0, 1.0))


# ------------------------------------------------------------------------------------------- box recall
# A reused box counts as found when a detection of its class overlaps it this much, at this confidence.
RECALL_IOU = 0.5
RECALL_SCORE = 0.5


def box_recall(model, items, iou: float = RECALL_IOU, score: float = RECALL_SCORE, batch_size: int = 8) -> dict:
    """Fraction of reused boxes that a detector (trained on the source) still finds in the images.

    ``items`` yields ``(image tensor [3, H, W] in [0, 1], target)`` with ``boxes`` (xyxy) and ``labels``,
    e.g. a ``PairedSynthetic`` of twins (the source boxes mapped onto each twin) or the real source
    images for reference. A box is found when a detection of the same class with confidence >= ``score``
    has IoU >= ``iou`` with it (each detection finds at most one box). The same question the YOLO score
    of layout-to-image papers asks of a generator, as a recall at one operating point.

    Returns ``{"boxes": N, "found": k, "recall": k / N}``.
    """
    import torch
    from torchvision.ops import box_iou

    model.eval()
    total = found = 0
    batch = []

    def flush():
        nonlocal total, found
        with torch.no_grad():
            outs = model([im for im, _ in batch])
        for (_, target), out in zip(batch, outs):
            gt, labels = target["boxes"], target["labels"]
            total += len(gt)
            keep = out["scores"] >= score
            det, dlab = out["boxes"][keep], out["labels"][keep]
            if not len(gt) or not len(det):
                continue
            overlap = box_iou(gt.float(), det.float())
            overlap[labels[:, None] != dlab[None, :]] = 0.0
            used = torch.zeros(len(det), dtype=torch.bool)
            for g in range(len(gt)):
                cand = (overlap[g] >= iou) & ~used
                if cand.any():
                    used[int(torch.argmax(torch.where(cand, overlap[g], -1.0)))] = True
                    found += 1
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return {"boxes": total, "found": found, "recall": found / total if total else float("nan")}
