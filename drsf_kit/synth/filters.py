"""Image filters the procedural weather and the generator failure modes share (numpy, float32 [H, W, 3])."""

from __future__ import annotations

import numpy as np


def box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur with edge padding; shifted sums for small radii, cumulative sums
    (cost independent of the radius) for large ones."""
    if radius < 1:
        return img
    k = 2 * radius + 1
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius + 1, radius) if radius > 2 else (radius, radius)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        if radius > 2:
            c = np.cumsum(p, axis=axis, dtype=np.float32)
            out = (_slice(c, axis, k, k + n) - _slice(c, axis, 0, n)) / k
        else:
            acc = _slice(p, axis, 0, n).copy()
            for s in range(1, k):
                acc += _slice(p, axis, s, s + n)
            out = acc / k
    return out


def _slice(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return a[start:stop] if axis == 0 else a[:, start:stop]
