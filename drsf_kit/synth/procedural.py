"""Procedural pseudo-target domains: 2D weather applied to the source image alone (no weights).

The effects only see the RGB image. Depth comes from a row-based proxy: a flat-ground model in which
distance grows toward a horizon row estimated from the image's row-brightness profile. That is
deliberately cruder than a renderer's true depth, so these images differ from real weather in the
way real pseudo-domains do. All work is vectorised numpy on float32 [H, W, 3] arrays in [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from drsf_kit.errors import ConfigError
from drsf_kit.synth.fidelity import appearance_gap, fidelity_rng, gap_rng, perturb_image, perturb_objects
from drsf_kit.synth.filters import box_blur  # noqa: F401  (also part of this module's API)
from drsf_kit.synth.base import GeneratedItem, Generator, SourceItem

# Which effects make each domain, applied in order.
DOMAIN_EFFECTS: dict[str, tuple[str, ...]] = {
    "daytime_clear": ("jitter",),
    "daytime_foggy": ("fog",),
    "dusk_rainy": ("dusk", "rain"),
    "night_sunny": ("night",),
    "night_rainy": ("night", "rain"),
}


def estimate_horizon(rgb: np.ndarray) -> int:
    """Row of the horizon: the strongest bright-to-dark drop of the smoothed row-mean brightness in
    the middle band of the image (sky above, ground below); 45% of the height when there is none."""
    h = rgb.shape[0]
    profile = rgb.reshape(rgb.shape[0], -1).mean(axis=1)
    k = max(3, h // 30)
    smooth = np.convolve(profile, np.ones(k, np.float32) / k, mode="same")
    drop = smooth[:-k] - smooth[k:]
    lo, hi = int(0.25 * h), int(0.65 * h)
    if hi <= lo or drop[lo:hi].size == 0 or drop[lo:hi].max() < 0.02:
        return int(0.45 * h)
    return int(lo + np.argmax(drop[lo:hi]) + k // 2)


def row_distance(h: int, horizon: int) -> np.ndarray:
    """Normalised distance per row, [H, 1, 1]: 1 at and above the horizon, falling like
    1 / (rows below the horizon) toward the bottom, as a flat ground plane does."""
    rows = np.arange(h, dtype=np.float32)
    below = np.maximum(rows - horizon, 0.0)
    return (1.0 / (1.0 + below / (0.08 * h)))[:, None, None]


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel max over R, G, B (elementwise: numpy's reduction over a length-3 axis is slow)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel min over R, G, B."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def _jitter(img, rgb_src, horizon, rng):
    # a near-identity twin for the source domain itself: mild brightness/contrast change
    mean = img.mean()
    return (img - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1), {}


def _fog(img, rgb_src, horizon, rng):
    h = img.shape[0]
    beta = float(rng.uniform(1.2, 2.5))
    air = float(rng.uniform(0.75, 0.9))
    trans = np.exp(-beta * row_distance(h, horizon))
    airlight = np.array([air, air, min(1.0, air * 1.03)], np.float32)
    # a slight blur of the far field: scattering also softens distant edges
    far = box_blur(img, max(1, h // 120))
    softened = img * trans + far * (1.0 - trans)
    img = softened * trans + airlight * (1.0 - trans)  # Koschmieder: J t + A (1 - t)
    return img, {"fog_beta": round(beta, 3), "airlight": round(air, 3)}


def _rain(img, rgb_src, horizon, rng, night: bool = False):
    h, w = img.shape[:2]
    density = float(rng.uniform(0.002, 0.005))
    n_drops = int(density * h * w)
    length = max(4, int(rng.uniform(0.05, 0.09) * h))
    slope = float(rng.uniform(-0.3, 0.3))
    # draw each slanted streak as `length` pixels from its drop (sparse: cost ~ drops x length)
    ys = rng.integers(0, h, n_drops)[:, None] + np.arange(length)[None, :]
    xs = rng.integers(0, w, n_drops)[:, None] + np.round(np.arange(length) * slope).astype(int)[None, :]
    weight = np.repeat(rng.uniform(0.4, 1.0, n_drops).astype(np.float32), length)
    streak = np.zeros(h * w, np.float32)
    np.add.at(streak, (ys % h * w + xs % w).ravel(), weight)  # wraps around: rain is periodic
    streak = np.minimum(streak.reshape(h, w, 1), 1.0)
    darken = 0.9 if night else float(rng.uniform(0.7, 0.8))
    img = (box_blur(img, 1) * 0.6 + img * 0.4) * darken  # wet air: a slight blur, less light
    colour = 0.35 if night else 0.8
    alpha = 0.55
    img = img * (1.0 - alpha * streak) + (alpha * colour) * streak
    return img, {"rain_density": round(density, 5), "rain_slope": round(slope, 3)}


def _dusk(img, rgb_src, horizon, rng):
    h = img.shape[0]
    gain = float(rng.uniform(0.45, 0.6))
    img = img * gain * np.array([1.1, 0.92, 0.75], np.float32)
    rows = np.arange(h, dtype=np.float32)
    glow = np.exp(-(((rows - horizon) / (0.25 * h)) ** 2))[:, None, None]
    img = img + glow * np.array([0.22, 0.11, 0.03], np.float32) * float(rng.uniform(0.6, 1.0))
    return np.clip(img, 0.0, 1.0) ** 1.1, {"dusk_gain": round(gain, 3)}


# At most this fraction of pixels counts as light sources (a lit car body is not a lamp).
MAX_LIGHT_FRACTION = 0.004


def light_sources(rgb_src: np.ndarray, horizon: int) -> np.ndarray:
    """Bool [H, W]: the brightest saturated pixels (tail lights, signs) and near-white highlights
    below the sky, capped at the brightest MAX_LIGHT_FRACTION of the image."""
    h, w = rgb_src.shape[:2]
    vmax = channel_max(rgb_src)
    sat = (vmax - channel_min(rgb_src)) / np.maximum(vmax, 1e-3)
    score = np.where((vmax > 0.6) & (sat > 0.5), vmax * sat, np.float32(0.0))
    score = score + (vmax > 0.97)  # near-white highlights rank above any coloured light
    score[: max(0, horizon - h // 20)] = 0.0  # a bright sky is not a lamp
    cap = max(1, int(MAX_LIGHT_FRACTION * h * w))
    candidates = score[score > 0]
    if candidates.size > cap:
        # partition only the candidates: many tied zeros make numpy's selection very slow
        return score >= np.partition(candidates, -cap)[-cap]
    return score > 0


def halo(lights_rgb: np.ndarray, radius: int) -> np.ndarray:
    """A soft glow around light pixels: two box passes (~ Gaussian) at half resolution, which is
    plenty for a blurred halo and four times cheaper."""
    h, w = lights_rgb.shape[:2]
    a = np.pad(lights_rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    small = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25
    r = max(1, radius // 2)
    glow = box_blur(box_blur(small, r), r)
    return np.repeat(np.repeat(glow, 2, axis=0), 2, axis=1)[:h, :w]


def _night(img, rgb_src, horizon, rng):
    h = img.shape[0]
    lights = light_sources(rgb_src, horizon)
    gain = float(rng.uniform(0.45, 0.6))
    gamma = float(rng.uniform(1.15, 1.35))
    sky = np.where(np.arange(h) < horizon, 0.5, 1.0).astype(np.float32)[:, None, None]
    img = np.clip(img * gain * sky, 0.0, 1.0) ** gamma
    img = img * np.array([0.8, 0.9, 1.15], np.float32)
    # sensor noise (luminance: it dominates in the dark)
    img = img + 0.015 * rng.standard_normal(img.shape[:2] + (1,), dtype=np.float32)
    if lights.any():
        src_lights = rgb_src * lights[..., None]
        img = np.maximum(img + 3.0 * halo(src_lights, max(2, h // 45)), src_lights)
    return img, {"night_gain": round(gain, 3), "gamma": round(gamma, 3), "light_pixels": int(lights.sum())}


_EFFECTS = {"jitter": _jitter, "fog": _fog, "rain": _rain, "dusk": _dusk, "night": _night}


def check_domain(domain: str) -> None:
    """ConfigError listing the valid domains when the procedural backend has no recipe for ``domain``."""
    if domain not in DOMAIN_EFFECTS:
        raise ConfigError(f"the procedural backend has no recipe for domain {domain!r}; "
                          f"valid domains: {', '.join(DOMAIN_EFFECTS)}")


def apply_domain(rgb: np.ndarray, domain: str, seed: int, fidelity: float = 0.0,
                 boxes=None, gap: float = 0.0) -> tuple[np.ndarray, dict]:
    """Apply ``domain``'s effects to a uint8 [H,W,3] image; returns (uint8 image, effect parameters).

    ``fidelity`` > 0 adds the generator failure modes of ``drsf_kit.synth.fidelity`` (objects of the
    labelled ``boxes`` missing, shifted, reshaped; hallucinated objects before the weather; texture,
    smoothing and style artefacts after it); their counts land in ``info["perturbations"]``. ``gap`` > 0
    adds the appearance gap (``fidelity.appearance_gap``) right after the weather; its amounts land in
    ``info["appearance_gap"]``. At 0 no draw is made for either and the output is the clean one. The
    result depends only on the arguments.
    """
    check_domain(domain)
    rng = np.random.default_rng(seed)
    src = rgb.astype(np.float32) * (1.0 / 255.0)
    horizon = estimate_horizon(src)
    img = src
    info: dict = {"horizon": horizon}
    if fidelity > 0 or gap > 0:
        frng = fidelity_rng(seed)
        img, counts = perturb_objects(img, boxes, fidelity, frng)
        scene = img  # the generated scene before its weather: what an under-translated twin falls back to
        img, more = _apply_effects(img, src, horizon, rng, domain, info)
        img, drawn = appearance_gap(img, scene, gap, gap_rng(seed))
        img, late = perturb_image(img, fidelity, frng)
        if fidelity > 0:
            info["perturbations"] = {**counts, **late}
        if gap > 0:
            info["appearance_gap"] = {"gap": gap, **drawn}
        out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out, info
    img, _ = _apply_effects(img, src, horizon, rng, domain, info)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, info


def _apply_effects(img, src, horizon, rng, domain: str, info: dict):
    """The weather effects of ``domain`` in order; their parameters are added to ``info``."""
    effects = DOMAIN_EFFECTS[domain]
    for name in effects:
        if name == "rain":
            img, params = _rain(img, src, horizon, rng, night="night" in effects)
        else:
            img, params = _EFFECTS[name](img, src, horizon, rng)
        info.update(params)
    return img, info


class ProceduralGenerator(Generator):
    """Weather effects computed from the 2D source image (fog, rain, dusk, night); no weights."""

    name = "procedural"

    def __init__(self, cfg):
        super().__init__(cfg)
        for domain in cfg.domains:  # fail before any image is made
            check_domain(domain)

    def identity(self) -> dict:
        """The model id is this module; the hash covers its source, so a changed recipe shows."""
        digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        return {"model": "drsf_kit.synth.procedural", "model_hash": digest}

    def generate(self, items: list[SourceItem], domain: str, seeds: list[int]) -> list[GeneratedItem]:
        """One weather twin per item at the source size (crop None)."""
        from PIL import Image

        results = []
        strength = float(getattr(self.cfg, "fidelity", 0.0) or 0.0)
        gap = float(getattr(self.cfg, "appearance_gap", 0.0) or 0.0)
        for item, seed in zip(items, seeds):
            arr, info = apply_domain(np.asarray(item.image.convert("RGB")), domain, seed, strength, item.boxes, gap)
            image = Image.fromarray(arr)
            extra = {"effects": {k: v for k, v in info.items() if k not in ("perturbations", "appearance_gap")}}
            if strength > 0:  # clean rows stay exactly as before
                extra.update(fidelity=strength, perturbations=info["perturbations"])
            if gap > 0:
                extra["appearance_gap"] = info["appearance_gap"]
            results.append(GeneratedItem(
                image=image, crop=None, size=[image.width, image.height],
                prompt=f"procedural {'+'.join(DOMAIN_EFFECTS[domain])}", extra=extra,
            ))
        return results
