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
