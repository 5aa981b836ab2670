"""Generator failure modes: what box-grounded diffusion does to the labels a twin reuses, imitated on demand.

Layout-to-image models (GLIGEN, Li et al., CVPR 2023; InstanceDiffusion, Wang et al., CVPR 2024) keep
the box list they are given but not always the objects: some boxes come back empty, some objects are
drawn shifted or at another size or shape than their box, unrequested objects appear in the scene, and
the image carries texture and colour artefacts, over-smoothed detail and a style no camera produces.
The procedural backend's twins are pixel-aligned with exact labels (near-oracle augmentation); this
module degrades them in those ways so a benchmark can test methods in the regime the DRSF paper
describes. One knob, ``strength`` (``FIDELITY_LEVELS``: ``clean`` = 0, ``ldm`` = 1), scales every
rate; at 0 nothing is drawn and the twin is bitwise the clean one.

A second knob, the *appearance gap* (``gap`` in [0, 1]), imitates how a generator's weather differs from
real weather, which label failures alone do not: latent diffusion samples keep their mean brightness
near mid-grey (the non-zero terminal SNR of the common noise schedules; Lin et al., "Common Diffusion
Noise Schedules and Sample Steps are Flawed", WACV 2024), so a generated night is lighter and a
generated fog darker than the real ones; and an image-conditioned edit keeps part of its source's
appearance (SDEdit's realism/faithfulness trade-off; Meng et al., ICLR 2022), so a daytime photo turned
into "night" still carries daylight colours. ``appearance_gap`` applies both after the weather. A named
level is a (strength, gap) pair (``LEVELS``); ``ldm_gap`` is the ``ldm`` failures plus the gap set in
docs/protocol.md (on source_only and naive_synth only, before any DRSF run).

Everything is seeded by the twin's own seed (a generator separate from the weather's draws) and
``perturb_objects``/``perturb_image`` return the counts per kind, which the manifest row records.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.errors import ConfigError
from drsf_kit.synth.filters import box_blur

# Named levels: (strength of the failure modes, appearance gap). `ldm` is calibrated in docs/synth.md
# against the box fidelity reported for GLIGEN and InstanceDiffusion; `ldm_gap`'s gap in docs/protocol.md.
LEVELS = {"clean": (0.0, 0.0), "ldm": (1.0, 0.0), "ldm_gap": (1.0, 1.0)}
# strength per level name; any float >= 0 is accepted too
FIDELITY_LEVELS = {name: strength for name, (strength, _gap) in LEVELS.items()}

# Per-box probabilities at strength 1 (mutually exclusive, drawn once per labelled box).
P_MISSING = 0.22  # the box is kept, the object is not drawn
P_SHIFTED = 0.14  # the object is drawn displaced by 30-70% of its box size
P_RESHAPED = 0.14  # the object is drawn at another width and height (x0.5-0.75 or x1.35-1.7 per axis)
# Expected counts / probabilities per image at strength 1.
HALLUCINATED = 0.8  # Poisson mean of unlabelled copies of an object pasted elsewhere
BLOTCHES = 1.5  # Poisson mean of texture/colour artefact patches
P_SMOOTH = 0.7  # probability of over-smoothing (loss of fine detail)
P_DRIFT = 0.8  # probability of a global style drift (tint, saturation, tone curve)

KINDS = ("missing", "shifted", "reshaped", "hallucinated", "texture", "smoothed", "style_drift")

# The appearance gap at gap 1 (each twin draws its own amounts; both scale linearly with the gap).
KEEP_SOURCE = (0.5, 0.9)  # share of the twin's daylight scene left in it (under-translation)
GREY_PULL = (0.5, 0.9)  # share of the distance from the twin's mean brightness to mid-grey that is closed
MID_GREY = 0.5
GAP_KINDS = ("kept_source", "grey_pull")


def parse_fidelity(value) -> float:
    """A level name (``clean``, ``ldm``) or a non-negative number -> strength; ConfigError otherwise."""
    if isinstance(value, str) and value in FIDELITY_LEVELS:
        return FIDELITY_LEVELS[value]
    try:
        strength = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"fidelity must be one of {', '.join(FIDELITY_LEVELS)} or a number >= 0, got {value!r}") from None
    if not np.isfinite(strength) or strength < 0:
        raise ConfigError(f"fidelity strength must be a finite number >= 0, got {value!r}")
    return strength


def parse_level(value) -> tuple[float, float]:
    """(strength, appearance gap) of a level name (``LEVELS``) or of a bare strength (gap 0)."""
    if isinstance(value, str) and value in LEVELS:
        return LEVELS[value]
    return parse_fidelity(value), 0.0


def check_gap(value) -> float:
    """The appearance gap as a float in [0, 1]; ConfigError otherwise."""
    try:
        gap = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"appearance gap must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= gap <= 1.0:
        raise ConfigError(f"appearance gap must be a number in [0, 1], got {value!r}")
    return gap


def _stream(seed: int, salt: int) -> np.random.Generator:
    """One of a twin's independent random streams: ``seed`` and a per-purpose ``salt``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, salt])))


def gap_rng(seed: int) -> np.random.Generator:
    """The appearance gap's generator of a twin: independent of the weather's and the failure modes' draws,
    so a gap of 0 leaves every other draw, and the twin, as it was."""
    return _stream(seed, 104729)


def appearance_gap(img: np.ndarray, source: np.ndarray, gap: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A generator's weather instead of the real one, on a float [H, W, 3] twin in [0, 1].

    ``source`` is the twin's scene before its weather, object failures included (so a missing object
    stays missing). Keeps a share of that daylight appearance (under-translation), then moves the twin's
    mean brightness toward mid-grey by an additive shift (contrast kept). Returns the new image and the
    amounts drawn (``kept_source``, ``grey_pull``); at ``gap`` 0 the image is returned as it is and
    nothing is drawn.
    """
    if gap <= 0:
        return img, {}
    keep = gap * float(rng.uniform(*KEEP_SOURCE))
    pull = gap * float(rng.uniform(*GREY_PULL))
    out = img * (1.0 - keep) + source * keep
    out = np.clip(out + pull * (MID_GREY - float(out.mean())), 0.0, 1.0).astype(np.float32)
    return out, {"kept_source": round(keep, 4), "grey_pull": round(pull, 4)}


def fidelity_rng(seed: int) -> np.random.Generator:
    """The perturbation generator of a twin: independent of the weather's ``default_rng(seed)``."""
    return _stream(seed, 7919)


def _int_box(box, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _erase(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Fill the box with the row-wise blend of the colours just left and right of it (an inpainted gap)."""
    h, w = img.shape[:2]
    left = img[y0:y1, max(0, x0 - 1)]
    right = img[y0:y1, min(w - 1, x1)]
    t = np.linspace(0.0, 1.0, x1 - x0, dtype=np.float32)[None, :, None]
    img[y0:y1, x0:x1] = left[:, None] * (1.0 - t) + right[:, None] * t


def _resize_nearest(patch: np.ndarray, nh: int, nw: int) -> np.ndarray:
    ys = np.minimum((np.arange(nh) * patch.shape[0] / nh).astype(int), patch.shape[0] - 1)
    xs = np.minimum((np.arange(nw) * patch.shape[1] / nw).astype(int), patch.shape[1] - 1)
    return patch[ys][:, xs]


def _paste(img: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> None:
    """Paste ``patch`` centred at (cx, cy), clipped to the image."""
    h, w = img.shape[:2]
    ph, pw = patch.shape[:2]
    x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
    if ax1 > ax0 and ay1 > ay0:
        img[ay0:ay1, ax0:ax1] = patch[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def perturb_objects(img: np.ndarray, boxes, strength: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Object-level failures on a float [H, W, 3] image whose labels stay ``boxes`` (xyxy pixels).

    Returns the new image and counts of ``missing``, ``shifted``, ``reshaped`` and ``hallucinated``.
    """
    counts = dict.fromkeys(KINDS[:4], 0)
    if strength <= 0:
        return img, counts
    h, w = img.shape[:2]
    boxes = [] if boxes is None else [_int_box(b, w, h) for b in np.asarray(boxes, dtype=np.float32).reshape(-1, 4)]
    boxes = [b for b in boxes if b[2] - b[0] >= 2 and b[3] - b[1] >= 2]
    original = img.copy()
    out = img.copy()
    p = np.minimum(np.array([P_MISSING, P_SHIFTED, P_RESHAPED]) * strength, 1.0)
    p = p / max(1.0, p.sum())  # at high strength every box fails, in the same proportions
    moved = []
    for (x0, y0, x1, y1) in boxes:
        u = rng.random()
        bw, bh = x1 - x0, y1 - y0
        if u < p[0]:
            _erase(out, x0, y0, x1, y1)
            counts["missing"] += 1
        elif u < p[0] + p[1]:
            _erase(out, x0, y0, x1, y1)
            dx = rng.uniform(0.3, 0.7) * bw * rng.choice([-1, 1])
            dy = rng.uniform(0.3, 0.7) * bh * rng.choice([-1, 1])
            moved.append((original[y0:y1, x0:x1], (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy))
            counts["shifted"] += 1
        elif u < p.sum():
            _erase(out, x0, y0, x1, y1)
            sx = rng.choice([rng.uniform(0.5, 0.75), rng.uniform(1.35, 1.7)])
            sy = rng.choice([rng.uniform(0.5, 0.75), rng.uniform(1.35, 1.7)])
            patch = _resize_nearest(original[y0:y1, x0:x1], max(2, int(bh * sy)), max(2, int(bw * sx)))
            moved.append((patch, (x0 + x1) / 2, (y0 + y1) / 2))
            counts["reshaped"] += 1
    for patch, cx, cy in moved:  # drawn after every erase, so a moved object is not erased again
        _paste(out, patch, cx, cy)
    for _ in range(int(rng.poisson(HALLUCINATED * strength)) if boxes else 0):
        x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))]
        scale = rng.uniform(0.7, 1.3)
        ph, pw = max(2, int((y1 - y0) * scale)), max(2, int((x1 - x0) * scale))
        for _try in range(5):  # somewhere no label is, or it would not be an unlabelled object
            cx, cy = rng.uniform(pw / 2, max(pw / 2 + 1, w - pw / 2)), rng.uniform(ph / 2, max(ph / 2 + 1, h - ph / 2))
            cand = (cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2)
            if all(_iou(cand, b) < 0.1 for b in boxes):
                _paste(out, _resize_nearest(original[y0:y1, x0:x1], ph, pw), cx, cy)
                counts["hallucinated"] += 1
                break
    return out, counts


def perturb_image(img: np.ndarray, strength: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Image-level artefacts on a float [H, W, 3] image in [0, 1]: texture/colour blotches, over-smoothing,
    style drift. Returns the new image and counts of ``texture``, ``smoothed`` and ``style_drift``."""

    counts = dict.fromkeys(KINDS[4:], 0)
    if strength <= 0:
        return img, counts
    h, w = img.shape[:2]
    out = img.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.poisson(BLOTCHES * strength))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.06, 0.18) * h, rng.uniform(0.06, 0.18) * w
        soft = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))[..., None]
        period = rng.uniform(3.0, 8.0)
        texture = 0.5 + 0.5 * np.sin((xx * rng.uniform(-1, 1) + yy) * (2 * np.pi / period))[..., None]
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        patch = 0.5 * out[..., ::-1] + 0.3 * colour + 0.2 * texture  # swapped channels: a hue artefact
        out = out * (1 - 0.8 * soft) + patch * (0.8 * soft)
        counts["texture"] += 1
    if rng.random() < min(1.0, P_SMOOTH * strength):
        out = box_blur(out, int(rng.integers(1, 3)))
        counts["smoothed"] += 1
    if rng.random() < min(1.0, P_DRIFT * strength):
        grey = out.mean(axis=2, keepdims=True)
        sat = rng.uniform(1.2, 1.6)
        tint = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
        out = np.clip(grey + (out - grey) * sat + tint, 0.0, 1.0) ** rng.uniform(0.75, 0.9)
        counts["style_drift"] += 1
    return np.clip(out, 0.0, 1.0).astype(np.float32), counts
