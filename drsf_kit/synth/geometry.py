"""Crop-then-resize geometry shared by the generators and the consistency score.

A twin of source image S is ``resize(crop(S, crop), size)``; ``crop`` is ``[x0, y0, x1, y1]`` in source
pixels (None = the whole image) and ``size`` is ``[W, H]`` of the twin. Boxes and masks follow the same
map (``drsf_kit.data.manifest.map_boxes`` / ``map_mask``), which is what the manifest records and what
the paired-data reader applies.
"""

from __future__ import annotations


def round_down8(value: float) -> int:
    """Largest multiple of 8 not above ``value`` (at least 8): latent diffusion needs it."""
    return max(8, int(value) // 8 * 8)


def fit_size(width: int, height: int, long_side: int = 0) -> tuple[int, int]:
    """Output ``(W, H)`` for a full-frame twin: the source size (or scaled so its longer side is
    ``long_side``), each side rounded down to a multiple of 8."""
    if long_side and long_side > 0:
        scale = long_side / max(width, height)
        width, height = round(width * scale), round(height * scale)
    return round_down8(width), round_down8(height)


def center_square_crop(width: int, height: int) -> list[int]:
    """The centred square crop ``[x0, y0, x1, y1]`` with side min(width, height)."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return [x0, y0, x0 + side, y0 + side]


def crop_resize_image(image, crop: list[int] | None, size: list[int], resample=None):
    """Apply a twin's geometry to a PIL image (the source image, or a rendered mask)."""
    from PIL import Image

    if resample is None:
        resample = Image.BICUBIC
    if crop is not None:
        image = image.crop(tuple(crop))
    if list(image.size) != list(size):
        image = image.resize(tuple(size), resample)
    return image
