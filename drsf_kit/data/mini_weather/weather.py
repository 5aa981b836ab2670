"""Weather and time-of-day rendering of a mini-weather scene, physically motivated and depth-aware.

The "real" target domains of the benchmark are rendered here from the scene's *true* depth map and
3D light sources, unlike the 2D-only pseudo-domains: fog follows the atmospheric scattering model
``I = J t + A (1 - t)`` with ``t = exp(-beta d)``; street lamps light every pixel by inverse-square
falloff from its 3D position (recovered from depth); a wet road mirrors what stands on it. Images are
float32 in [0, 1] until the final conversion; every random draw comes from the caller's generator.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from drsf_kit.data.mini_weather.scene import (
    BUILDING,
    ROAD,
    SIDEWALK,
    SKY,
    Scene,
    smooth_field,
)

_GAMMA = 2.2  # display <-> linear light; lighting is applied in linear light


def _lin(img: np.ndarray) -> np.ndarray:
    return np.power(np.clip(img, 0.0, 1.0), _GAMMA)


def _srgb(lin: np.ndarray) -> np.ndarray:
    return np.power(np.clip(lin, 0.0, 1.0), 1.0 / _GAMMA)


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float image in [0, 1] (through 8-bit PIL: fast, and precise enough here)."""
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    mode = "RGB" if img.ndim == 3 else "L"
    return np.asarray(Image.fromarray(u8, mode).filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def exposure(img: np.ndarray, rng: np.random.Generator, lo: float = 0.85, hi: float = 1.15) -> np.ndarray:
    """Random camera exposure gain and a slight white-balance shift, in linear light."""
    gain = rng.uniform(lo, hi) * (1.0 + rng.normal(0.0, 0.02, 3))
    return _srgb(_lin(img) * gain.astype(np.float32))


def sensor_noise(img: np.ndarray, rng: np.random.Generator, read: float, shot: float) -> np.ndarray:
    """Signal-dependent sensor noise: variance ``read^2 + shot * I`` plus a little chroma noise."""
    sigma = np.sqrt(read * read + shot * np.clip(img, 0, 1))
    luma = rng.standard_normal(img.shape[:2] + (1,), dtype=np.float32)
    chroma = rng.standard_normal(img.shape, dtype=np.float32) * 0.35
    return np.clip(img + sigma * (luma + chroma), 0.0, 1.0)


def fog(img: np.ndarray, depth: np.ndarray, rng: np.random.Generator, beta: float,
        airlight: np.ndarray, patchiness: float = 0.3) -> np.ndarray:
    """Atmospheric scattering on the true depth: ``J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``patchiness`` modulates beta with low-frequency noise (fog is rarely uniform).
    """
    H, W = depth.shape
    beta_map = beta * np.clip(1.0 + patchiness * smooth_field(rng, H, W, cell=48), 0.3, None)
    t = np.exp(-beta_map * depth)[..., None]
    return img * t + airlight[None, None, :] * (1.0 - t)


def _sky_gradient(scene: Scene, top, horizon) -> np.ndarray:
    H = scene.mask.shape[0]
    s = np.clip(np.arange(H, dtype=np.float32) / max(scene.camera["horizon"], 1.0), 0, 1) ** 1.5
    col = np.asarray(top, np.float32)[None, :] * (1 - s[:, None]) + np.asarray(horizon, np.float32)[None, :] * s[:, None]
    return col[:, None, :]


def _points(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (X, Y, Z) of every pixel, from the true depth."""
    H, W = scene.depth.shape
    cam = scene.camera
    z = scene.depth
    x = (np.arange(W, dtype=np.float32)[None, :] + 0.5 - cam["cx"]) * z / cam["f"]
    y = cam["height"] - (np.arange(H, dtype=np.float32)[:, None] + 0.5 - cam["horizon"]) * z / cam["f"]
    return x, y, z


def lamp_light(scene: Scene, rng: np.random.Generator, power: float) -> np.ndarray:
    """Irradiance ``[H, W, 3]`` from the street lamps: inverse-square falloff times a downward cone."""
    H, W = scene.depth.shape
    x, y, z = _points(scene)
    total = np.zeros((H, W), np.float32)
    for lx, ly, lz in scene.lamps:
        dx, dy, dz = x - lx, ly - y, z - lz
        d2 = dx * dx + dy * dy + dz * dz
        cone = np.clip(dy / np.sqrt(d2 + 1e-6), 0.0, 1.0) ** 1.5
        total += power * cone / (d2 + 1.0)
    total[scene.mask == SKY] = 0.0
    warm = np.array([1.0, 0.78, 0.5], np.float32) if rng.random() < 0.7 else np.array([0.9, 0.95, 1.0], np.float32)
    return total[..., None] * warm


def glows(img: np.ndarray, scene: Scene, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Additive halos around the visible vehicle and street lamps (bloom of a bright point source)."""
    H, W = img.shape[:2]
    out = img.copy()
    colors = {"head": (1.0, 0.95, 0.82), "tail": (1.0, 0.12, 0.06), "lamp": (1.0, 0.82, 0.55)}
    for light in scene.lights:
        sigma = light.radius * rng.uniform(2.0, 3.0) + 1.2
        reach = int(4 * sigma) + 1
        x0, x1 = max(0, int(light.x) - reach), min(W, int(light.x) + reach + 1)
        y0, y1 = max(0, int(light.y) - reach), min(H, int(light.y) + reach + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d2 = (xx + 0.5 - light.x) ** 2 + (yy + 0.5 - light.y) ** 2
        gain = 1.3 if light.kind == "lamp" else (1.0 if light.kind == "head" else 0.75)
        halo = strength * gain * (0.55 * np.exp(-d2 / (2 * sigma**2)) + np.exp(-d2 / (2 * max(light.radius, 0.7) ** 2)))
        out[y0:y1, x0:x1] += halo[..., None] * np.asarray(colors[light.kind], np.float32)
    return np.clip(out, 0.0, 1.0)


def wet_ground(img: np.ndarray, scene: Scene, rng: np.random.Generator, darken: float, reflect: float) -> np.ndarray:
    """A wet road: darker asphalt plus a rippled mirror image of whatever stands on it, puddles stronger.

    Each ground pixel mirrors the pixel the same distance above the nearest non-ground pixel in its
    column, i.e. the ground plane acts as a mirror about each object's contact line.
    """
    from scipy.ndimage import uniform_filter1d

    H, W = scene.mask.shape
    ground = np.isin(scene.mask, (ROAD, SIDEWALK))
    rows = np.arange(H)[:, None]
    last = np.maximum.accumulate(np.where(~ground, rows, -1), axis=0)
    src = np.clip(2 * last - rows + 1, 0, H - 1)
    refl = np.take_along_axis(img, np.broadcast_to(src[..., None], img.shape), axis=0)
    valid = ground & (last >= 0) & ~np.take_along_axis(ground, src, axis=0)
    refl = uniform_filter1d(refl, size=max(3, H // 40), axis=0)  # ripples smear reflections vertically
    shift = (1.5 * smooth_field(rng, H, W, cell=4)).astype(np.int64)
    refl = np.take_along_axis(refl, np.clip(np.arange(W)[None, :] + shift, 0, W - 1)[..., None].repeat(3, -1), axis=1)
    puddles = np.clip(smooth_field(rng, H, W, cell=20) - 0.3, 0, 1)  # patches of standing water
    weight = reflect * (0.6 + puddles)[..., None] * valid[..., None]
    wet = img * darken + refl * weight
    return np.where(ground[..., None], np.clip(wet, 0, 1), img)


def rain_streaks(img: np.ndarray, rng: np.random.Generator, ambient: float, density: float = 1.0) -> np.ndarray:
    """Slanted, semi-transparent streaks lit by the ambient light and by the scene behind them."""
    H, W = img.shape[:2]
    scale = H / 180.0
    angle = rng.uniform(-0.35, 0.35)
    layer = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(layer)
    n = int(rng.uniform(300, 600) * density * H * W / 57600)
    for near in (False, True):  # far drops: short and thin; near drops: long, wide and blurred
        count = n // 6 if near else n
        xs, ys = rng.uniform(-0.2 * W, 1.2 * W, count), rng.uniform(-0.1 * H, H, count)
        lengths = rng.uniform(10, 24, count) * scale if near else rng.uniform(4, 12, count) * scale
        angles = angle + rng.normal(0, 0.04, count)
        levels = rng.integers(60, 170 if near else 230, count)
        for x, y, length, a, lev in zip(xs, ys, lengths, angles, levels):
            draw.line([(x, y), (x + length * np.sin(a), y + length * np.cos(a))], fill=int(lev),
                      width=2 if near else 1)
    alpha = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.7)), np.float32)[..., None] / 255.0
    alpha *= rng.uniform(0.45, 0.7)
    color = np.clip(ambient + 0.8 * _blur(img, 4.0), 0, 1)
    return img * (1 - alpha) + color * alpha


def droplets(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Water drops on the lens: round, blurry patches with a faint rim highlight."""
    H, W = img.shape[:2]
    layer = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 10))):
        r = rng.uniform(4, 12) * H / 180.0
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        draw.ellipse((x - r, y - r * 1.1, x + r, y + r * 1.1), fill=255)
    m = np.asarray(layer.filter(ImageFilter.GaussianBlur(1.5)), np.float32)[..., None] / 255.0
    return img * (1 - m) + (_blur(img, 5.0) * 1.08 + 0.02) * m


def _clear(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    img = exposure(scene.image, rng)
    return sensor_noise(img, rng, read=0.006, shot=0.0004)


def _foggy(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    # Overcast fog: diffuse light (lower exposure, no sun) and a grey-white airlight.
    img = exposure(scene.image, rng, 0.75, 0.95)
    airlight = (rng.uniform(0.72, 0.9) + rng.normal(0, 0.01, 3)).astype(np.float32)
    airlight[2] += 0.02
    img = fog(img, scene.depth, rng, beta=rng.uniform(0.03, 0.07), airlight=airlight)
    return sensor_noise(img, rng, read=0.008, shot=0.0005)


def _night_base(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Low bluish ambient light, lamp pools from 3D lamps, lit windows, a dark sky, halos."""
    ambient = rng.uniform(0.004, 0.012) * np.array([0.75, 0.85, 1.15], np.float32)
    light = ambient + lamp_light(scene, rng, power=rng.uniform(12, 24))
    img = _srgb(_lin(scene.albedo) * light)
    sky = _sky_gradient(scene, (0.015, 0.02, 0.045), np.array([0.11, 0.08, 0.07]) * rng.uniform(0.6, 1.2))
    img = np.where((scene.mask == SKY)[..., None], np.broadcast_to(sky, img.shape), img)
    lit = rng.random(256) < rng.uniform(0.2, 0.45)
    lit[0] = False
    level = rng.uniform(0.35, 0.8, 256).astype(np.float32)
    on = lit[scene.windows] & (scene.mask == BUILDING)
    window = level[scene.windows][..., None] * np.array([1.0, 0.8, 0.5], np.float32)
    img = np.where(on[..., None], window, img)
    return glows(img, scene, rng, strength=rng.uniform(0.7, 1.0))


def _rain(img: np.ndarray, scene: Scene, rng: np.random.Generator, ambient: float, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    img = wet_ground(img, scene, rng, darken=rng.uniform(0.6, 0.75), reflect=rng.uniform(0.3, 0.5))
    haze = ambient * rng.uniform(0.8, 1.1) * np.asarray(tint, np.float32)
    img = fog(img, scene.depth, rng, beta=rng.uniform(0.008, 0.02), airlight=haze)
    return rain_streaks(img, rng, ambient=ambient * 0.8)


def _dusk_rainy(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    H = scene.mask.shape[0]
    # Low warm sun and a blue sky fill, in linear light; then a warm haze rising toward the horizon.
    sun = rng.uniform(0.14, 0.26) * np.array([1.0, 0.58, 0.3], np.float32)
    fill = rng.uniform(0.02, 0.04) * np.array([0.6, 0.7, 1.0], np.float32)
    img = _srgb(_lin(scene.image) * (sun + fill))
    sky = _sky_gradient(scene, (0.22, 0.2, 0.36), np.array([1.0, 0.55, 0.25]) * rng.uniform(0.85, 1.0))
    img = np.where((scene.mask == SKY)[..., None], np.broadcast_to(sky, img.shape), img)
    v = np.arange(H, dtype=np.float32)[:, None, None]
    glow = np.exp(-np.abs(v - scene.camera["horizon"]) / (0.35 * H)) * rng.uniform(0.1, 0.2)
    img = img + glow * np.array([1.0, 0.5, 0.22], np.float32)
    img = glows(img, scene, rng, strength=rng.uniform(0.35, 0.6))
    img = _rain(img, scene, rng, ambient=0.4, tint=(1.0, 0.7, 0.45))
    return sensor_noise(img, rng, read=0.012, shot=0.001)


def _night_sunny(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    img = _night_base(scene, rng)
    return sensor_noise(img, rng, read=rng.uniform(0.015, 0.025), shot=0.002)


def _night_rainy(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    img = _night_base(scene, rng)
    img = _rain(img, scene, rng, ambient=0.1)
    img = droplets(img, rng)
    return sensor_noise(img, rng, read=rng.uniform(0.018, 0.028), shot=0.002)


RENDERERS = {
    "daytime_clear": _clear,
    "daytime_foggy": _foggy,
    "dusk_rainy": _dusk_rainy,
    "night_rainy": _night_rainy,
    "night_sunny": _night_sunny,
}


def render_domain(scene: Scene, domain: str, rng) -> np.ndarray:
    """Render ``scene`` as seen in ``domain`` (a DWD domain name); returns uint8 ``[H, W, 3]``.

    ``rng`` is a ``numpy.random.Generator`` or an int seed.
    """
    if domain not in RENDERERS:
        raise KeyError(f"unknown domain {domain!r}; valid domains: {', '.join(RENDERERS)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.Generator(np.random.PCG64(rng))
    img = RENDERERS[domain](scene, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
