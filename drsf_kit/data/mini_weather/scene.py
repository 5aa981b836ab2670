"""Procedural street scenes for the mini-weather benchmark: geometry, objects, labels, true depth.

A pinhole camera at height ``CAMERA_HEIGHT_M`` looks down a straight street. Every pixel of the ground
at image row ``v`` lies at depth ``f * h / (v - horizon)``, so an object standing on the ground at depth
``Z`` is drawn at scale ``f / Z`` pixels per metre with its feet on that row: perspective comes from
the ground plane alone. Facades are vertical planes ``X = const`` along the street; objects, trees and
poles are upright fronto-parallel cut-outs at one depth each. Everything is painted far to near into an
RGB image and, with the same polygons, into an id image whose per-id tables give the Cityscapes train
id (the mask) and the depth law (the depth map), so labels and depth agree with the picture exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from drsf_kit.data.classes import DWD_CLASSES, DWD_TO_CITYSCAPES_TRAIN_ID
from drsf_kit.data.mini_weather.objects import (
    CLASS_HEIGHT_M,
    Template,
    object_template,
    prop_template,
    rider_template,
)

CAMERA_HEIGHT_M = 1.5
SKY_DEPTH_M = 1000.0  # "infinitely" far: fog transmission exp(-beta * 1000) is 0 for every beta used
LANE_WIDTH_M = 3.4
FAR_Z_M = 220.0  # buildings end here; beyond, only sky and ground remain

# Cityscapes train ids used by the scene (objects use DWD_TO_CITYSCAPES_TRAIN_ID).
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY = 0, 1, 2, 5, 7, 8, 10

# Depth laws of the id tables.
_KIND_SKY, _KIND_GROUND, _KIND_FACADE, _KIND_CONST = 0, 1, 2, 3


@dataclass(frozen=True)
class MiniWeatherSpec:
    """Difficulty knobs of the mini-weather scenes (pixel sizes refer to a 180-pixel-high image)."""

    min_objects: int = 3  # fewer leaves too little to learn from per image
    max_objects: int = 8  # more crowds a 180x320 frame and multiplies occlusion
    min_object_px: float = 14.0  # full height of a placed object: smaller ones are guesswork at 180 px
    min_box_px: float = 6.0  # visible boxes lower than this are annotated difficult
    max_occlusion: float = 0.7  # objects hidden more than this are annotated difficult
    drop_visible_frac: float = 0.1  # objects with less than this visible are not annotated at all
    min_depth_m: float = 6.5  # nearer objects would fill half the frame
    max_depth_m: float = 40.0  # farther ones fall below min_object_px anyway for most classes
    max_box_overlap: float = 0.3  # intersection over the smaller box: keeps occlusion moderate
    texture_noise: float = 0.06  # amplitude of low-frequency surface texture (0 = flat colours)
    grain_noise: float = 0.015  # per-pixel asphalt/facade grain, in [0, 1] intensity units
    max_trees: int = 5  # clutter: trees can occlude objects, so keep them few
    max_signs: int = 2  # poles with traffic signs
    # Relative frequency of each placed object group; a rider group adds a bike or motor under it.
    class_weights: tuple[tuple[str, float], ...] = (
        ("car", 0.34), ("person", 0.19), ("rider", 0.13), ("truck", 0.1),
        ("bus", 0.08), ("bike", 0.08), ("motor", 0.08),
    )


@dataclass
class SceneObject:
    """One annotated object: class, visible box (0-based pixel-edge ``xyxy``), flags, depth."""

    name: str
    box: tuple[float, float, float, float]  # exact visible extent: pixels x0..x1-1, y0..y1-1
    difficult: bool
    visible_frac: float
    depth: float
    truncated: bool
    view: str


@dataclass
class Light:
    """A light source in image coordinates (vehicle lamps, street lamps) for night/dusk rendering."""

    x: float
    y: float
    radius: float  # pixels
    kind: str  # "head", "tail" or "lamp"
    depth: float


@dataclass
class Scene:
    """A rendered clear-day scene with its labels, true depth and light sources.

    ``image`` is float32 ``[H, W, 3]`` in [0, 1]; ``mask`` uint8 Cityscapes train ids; ``depth`` float32
    metres along the optical axis (sky = ``SKY_DEPTH_M``); ``instances`` uint8 with ``k + 1`` on the
    visible pixels of ``objects[k]``; ``windows`` uint8 window ids (0 = no window) for lit windows.
    """

    image: np.ndarray
    albedo: np.ndarray  # the image without the sun's contact shadows (night starts from it)
    mask: np.ndarray
    depth: np.ndarray
    instances: np.ndarray
    windows: np.ndarray
    objects: list[SceneObject]
    lights: list[Light]
    lamps: list[tuple[float, float, float]]  # street-lamp heads, world (X, Y, Z) in metres
    camera: dict = field(default_factory=dict)  # f, cx, horizon, height (pixels / metres)


class _Canvas:
    """Draws the same shapes into the RGB picture and the id image, allocating ids with tables."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = Image.fromarray(rgb, "RGB")
        self.ids = Image.new("L", (rgb.shape[1], rgb.shape[0]), 0)
        self.win = Image.new("L", (rgb.shape[1], rgb.shape[0]), 0)
        self.d_rgb, self.d_ids, self.d_win = (ImageDraw.Draw(im) for im in (self.rgb, self.ids, self.win))
        self.cls = [SKY]
        self.kind = [_KIND_SKY]
        self.param = [0.0]
        self.n_windows = 0

    def new_id(self, train_id: int, kind: int, param: float = 0.0) -> int:
        if len(self.cls) >= 255:  # uint8 id image; the spec's object and prop counts stay far below
            raise RuntimeError("mini-weather scene has more than 254 painted items")
        self.cls.append(train_id)
        self.kind.append(kind)
        self.param.append(float(param))
        return len(self.cls) - 1

    def poly(self, pts, color, ident: int | None) -> None:
        pts = [(float(x), float(y)) for x, y in pts]
        self.d_rgb.polygon(pts, fill=color)
        if ident is not None:
            self.d_ids.polygon(pts, fill=ident)

    def window(self, pts, color) -> None:
        pts = [(float(x), float(y)) for x, y in pts]
        self.d_rgb.polygon(pts, fill=color)
        self.n_windows = self.n_windows % 255 + 1
        self.d_win.polygon(pts, fill=self.n_windows)

    def ellipse(self, box, color, ident: int | None, width: int = 0) -> None:
        x0, y0, x1, y1 = box
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if width:  # a ring (bike wheels)
            self.d_rgb.ellipse(box, outline=color, width=width)
            if ident is not None:
                self.d_ids.ellipse(box, outline=ident, width=width)
        else:
            self.d_rgb.ellipse(box, fill=color)
            if ident is not None:
                self.d_ids.ellipse(box, fill=ident)

    def line(self, pts, color, width: int, ident: int | None) -> None:
        pts = [(float(x), float(y)) for x, y in pts]
        self.d_rgb.line(pts, fill=color, width=width, joint="curve")
        if ident is not None:
            self.d_ids.line(pts, fill=ident, width=width, joint="curve")


class _Camera:
    """Pinhole camera looking along +Z; X to the right, Y up, ground at Y = 0."""

    def __init__(self, f: float, cx: float, horizon: float, height: float):
        self.f, self.cx, self.horizon, self.h = f, cx, horizon, height

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.cx + self.f * x / z, self.horizon + self.f * (self.h - y) / z

    def ground_row(self, z: float) -> float:
        return self.horizon + self.f * self.h / z

    def ground_quad(self, x0: float, x1: float, z0: float, z1: float):
        return [self.project(x0, 0, z0), self.project(x1, 0, z0), self.project(x1, 0, z1), self.project(x0, 0, z1)]


def _jitter(rng: np.random.Generator, base, amount: float = 18.0) -> tuple[int, int, int]:
    noise = rng.normal(0.0, amount, 3)
    return tuple(int(min(255.0, max(0.0, b + n))) for b, n in zip(base, noise))


def _grey_jitter(rng: np.random.Generator, base, amount: float) -> tuple[int, int, int]:
    """Brightness jitter with only a faint tint (asphalt and pavement are grey, not green)."""
    shift = rng.normal(0.0, amount) + rng.normal(0.0, 2.0, 3)
    return tuple(int(min(255.0, max(0.0, b + n))) for b, n in zip(base, shift))


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255.0, max(0.0, c * factor))) for c in color)


_BUILDING_COLORS = ((196, 178, 150), (150, 150, 155), (160, 90, 70), (220, 215, 200), (205, 190, 120),
                    (120, 95, 80), (175, 160, 170), (110, 120, 130))


def _sky(rng: np.random.Generator, height: int, width: int, horizon: float) -> np.ndarray:
    top = np.array([70, 120, 190]) + rng.normal(0, 12, 3)
    low = np.array([185, 205, 225]) + rng.normal(0, 10, 3)
    t = np.clip(np.arange(height, dtype=np.float32) / max(horizon, 1.0), 0, 1)[:, None]
    col = top[None, :] * (1 - t) + low[None, :] * t
    sky = np.broadcast_to(col[:, None, :], (height, width, 3)).copy()
    # soft clouds: a coarse random field upsampled, brightening the sky in patches
    cloud = smooth_field(rng, height, width, cell=24)
    sky += np.clip(cloud, 0, None)[..., None] * rng.uniform(15, 45)
    return np.clip(sky, 0, 255).astype(np.uint8)


def smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise (bilinear upsampling of a coarse normal grid)."""
    gh, gw = height // cell + 2, width // cell + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    img = Image.fromarray(coarse, "F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _draw_street(cv: _Canvas, cam: _Camera, rng: np.random.Generator, geo: dict) -> None:
    """Road, markings, sidewalks and the two rows of facades with windows."""
    W, H = cv.rgb.size
    xl, xr, bl, br = geo["road_left"], geo["road_right"], geo["facade_left"], geo["facade_right"]
    z_near = cam.f * cam.h / (H * 2.0)  # the ground row of this depth lies below the image
    walk = cv.new_id(SIDEWALK, _KIND_GROUND)
    walk_col = _grey_jitter(rng, (165, 160, 155), 12)
    cv.poly([(0, cam.horizon), (W, cam.horizon), (W, H), (0, H)], walk_col, walk)
    road = cv.new_id(ROAD, _KIND_GROUND)
    road_col = _grey_jitter(rng, (95, 95, 100), 10)
    cv.poly(cam.ground_quad(xl, xr, z_near, 5000.0), road_col, road)
    curb = _shade(walk_col, 0.8)
    for x0, x1 in ((xl - 0.25, xl), (xr, xr + 0.25)):
        cv.poly(cam.ground_quad(x0, x1, z_near, FAR_Z_M), curb, walk)
    paint = _jitter(rng, (225, 225, 215), 8)
    for x in (xl + 0.25, xr - 0.4):  # solid edge lines
        cv.poly(cam.ground_quad(x, x + 0.15, z_near, 400.0), paint, road)
    phase = rng.uniform(0, 9)
    for k in range(1, geo["lanes"]):  # dashed lane dividers, 3 m dash every 9 m
        x = xl + k * LANE_WIDTH_M - 0.07
        for z0 in np.arange(z_near + phase, 160.0, 9.0):
            cv.poly(cam.ground_quad(x, x + 0.15, z0, z0 + 3.0), paint, road)
    if rng.random() < 0.35:  # zebra crossing
        z0 = rng.uniform(10, 30)
        for x in np.arange(xl + 0.5, xr - 0.5, 1.0):
            cv.poly(cam.ground_quad(x, x + 0.5, z0, z0 + 3.5), paint, road)
    sun_left = rng.random() < 0.5  # one row of facades is in the sun, the other in shade
    for side, plane in ((-1, bl), (1, br)):
        lit = 1.0 if (side < 0) == sun_left else 0.72
        z = 1.0
        while z < FAR_Z_M:
            length = rng.uniform(9, 26)
            _draw_building(cv, cam, rng, plane, z, min(z + length, FAR_Z_M), lit)
            z += length


def _draw_building(cv: _Canvas, cam: _Camera, rng: np.random.Generator, plane: float, z0: float,
                   z1: float, lit: float) -> None:
    height = rng.uniform(7, 24)
    base = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))]
    color = _shade(_jitter(rng, base, 14), lit)
    ident = cv.new_id(BUILDING, _KIND_FACADE, plane)
    corners = [cam.project(plane, 0, z0), cam.project(plane, height, z0), cam.project(plane, height, z1),
               cam.project(plane, 0, z1)]
    cv.poly(corners, color, ident)
    cornice = _shade(color, 0.7)
    cv.poly([cam.project(plane, height - 0.5, z0), cam.project(plane, height, z0), cam.project(plane, height, z1),
             cam.project(plane, height - 0.5, z1)], cornice, ident)
    glass = _shade(_jitter(rng, (70, 85, 105) if rng.random() < 0.7 else (150, 170, 190), 12), lit)
    sx, ww = rng.uniform(2.4, 3.6), rng.uniform(0.9, 1.5)
    fh, wh = rng.uniform(2.9, 3.4), rng.uniform(1.1, 1.7)
    shop = rng.random() < 0.5  # dark shop front on the ground floor
    if shop:
        cv.poly([cam.project(plane, 0.3, z0 + 0.5), cam.project(plane, 2.6, z0 + 0.5),
                 cam.project(plane, 2.6, z1 - 0.5), cam.project(plane, 0.3, z1 - 0.5)], _shade(glass, 0.8), ident)
    zs = np.arange(z0 + sx / 2, z1 - ww, sx)
    # A window on the facade plane spans f*|X|*ww / (z (z + ww)) pixels across: skip sub-pixel ones.
    zs = zs[cam.f * abs(plane) * ww / (zs * (zs + ww)) >= 1.0]
    ys = np.arange(fh + 0.8 if shop else 0.9, height - wh - 0.6, fh)
    if zs.size == 0 or ys.size == 0:
        return
    zn, zf = np.meshgrid(zs, ys)[0].ravel(), np.meshgrid(zs + ww, ys)[0].ravel()
    yb = np.meshgrid(zs, ys)[1].ravel()
    un, uf = cam.cx + cam.f * plane / zn, cam.cx + cam.f * plane / zf
    vnb, vnt = cam.horizon + cam.f * (cam.h - yb) / zn, cam.horizon + cam.f * (cam.h - yb - wh) / zn
    vfb, vft = cam.horizon + cam.f * (cam.h - yb) / zf, cam.horizon + cam.f * (cam.h - yb - wh) / zf
    for k in range(zn.size):
        cv.window([(un[k], vnb[k]), (un[k], vnt[k]), (uf[k], vft[k]), (uf[k], vfb[k])], glass)


@dataclass
class _Item:
    """One upright cut-out to paint: a template at lateral position ``x`` and depth ``z``."""

    template: Template
    x: float
    z: float
    train_id: int | None  # class of the parts without their own id; None = props (parts carry theirs)
    annotate: bool
    order: float  # painting key: larger is painted first (farther)
    idents: list = field(default_factory=list)
    full_px: int = 0


def _pixel_box(cam: _Camera, tmpl: Template, x: float, z: float) -> tuple[float, float, float, float]:
    x0, x1, y0, y1 = tmpl.extent()
    s = cam.f / z
    u, vb = cam.cx + cam.f * x / z, cam.ground_row(z)
    return u + x0 * s, vb - y1 * s, u + x1 * s, vb - y0 * s


def _inside_frac(box, width: int, height: int) -> float:
    x0, y0, x1, y1 = box
    area = max(1e-6, (x1 - x0) * (y1 - y0))
    cw = max(0.0, min(x1, width) - max(x0, 0.0))
    ch = max(0.0, min(y1, height) - max(y0, 0.0))
    return cw * ch / area


def _overlap(a, b) -> float:
    """Intersection over the smaller box."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1e-6)


def _candidate(rng: np.random.Generator, name: str, cam: _Camera, geo: dict, spec: MiniWeatherSpec,
               height: int, width: int) -> list[_Item]:
    """Sample one object group (a rider comes with its bike or motor) at a plausible place."""
    xl, xr = geo["road_left"], geo["road_right"]
    px_scale = height / 180.0
    z_lo = max(spec.min_depth_m, cam.f * cam.h / (height - 2 - cam.horizon))
    z_hi = max(z_lo, min(spec.max_depth_m, CLASS_HEIGHT_M[name] * cam.f / (spec.min_object_px * px_scale)))
    z = float(np.exp(rng.uniform(np.log(z_lo), np.log(z_hi))))
    sidewalk_x = (rng.uniform(geo["facade_left"] + 0.4, xl - 0.4) if rng.random() < 0.5
                  else rng.uniform(xr + 0.4, geo["facade_right"] - 0.4))
    if name in ("car", "bus", "truck"):
        if rng.random() < 0.35:
            view, x = "side", rng.uniform(xl + 1.0, xr - 1.0)
        else:
            lane = rng.integers(geo["lanes"])
            x = xl + (lane + 0.5) * LANE_WIDTH_M + rng.uniform(-0.3, 0.3)
            view = "front" if x < 0 else "rear"  # right-hand traffic: oncoming lanes on the left
    elif name == "person":
        on_walk = rng.random() < 0.8
        view = ("front" if rng.random() < 0.5 else "side") if on_walk else "side"
        x = sidewalk_x if on_walk else rng.uniform(xl + 0.5, xr - 0.5)
    else:  # bike, motor, rider: side view on the road, parked two-wheelers also on the sidewalk
        view = "side"
        on_walk = name != "rider" and rng.random() < 0.4
        x = sidewalk_x if on_walk else rng.uniform(xl + 0.8, xr - 0.8)
    if name == "rider":
        vehicle = "bike" if rng.random() < 0.5 else "motor"
        parts = [object_template(rng, vehicle, view), rider_template(rng, vehicle)]
        names = [vehicle, "rider"]
    else:
        parts, names = [object_template(rng, name, view)], [name]
    if view == "side" and rng.random() < 0.5:
        parts = [p.mirrored() for p in parts]
    return [_Item(p, x, z, DWD_TO_CITYSCAPES_TRAIN_ID[n], True, z - 1e-4 * k)
            for k, (p, n) in enumerate(zip(parts, names))]


def _place_objects(rng: np.random.Generator, cam: _Camera, geo: dict, spec: MiniWeatherSpec, height: int,
                   width: int, force_class: str | None) -> list[_Item]:
    names, weights = zip(*spec.class_weights)
    p = np.asarray(weights, dtype=float) / sum(weights)
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    wanted = ([force_class] if force_class else []) + [names[i] for i in rng.choice(len(names), size=n, p=p)]
    wanted = wanted[:max(n, 1)]
    placed: list[_Item] = []
    boxes: list[tuple] = []
    for k, name in enumerate(wanted):
        for _ in range(200 if k == 0 else 25):  # the forced class goes first into an empty street
            group = _candidate(rng, name, cam, geo, spec, height, width)
            bs = [_pixel_box(cam, it.template, it.x, it.z) for it in group]
            box = (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))
            if _inside_frac(box, width, height) < 0.8 or box[1] < -0.1 * height:
                continue
            if any(_overlap(box, other) > spec.max_box_overlap for other in boxes):
                continue
            placed += group
            boxes.append(box)
            break
    return placed


def _place_props(rng: np.random.Generator, geo: dict, spec: MiniWeatherSpec) -> list[_Item]:
    ids = {"pole": POLE, "sign": SIGN, "vegetation": VEGETATION}
    xl, xr = geo["road_left"], geo["road_right"]
    items = []

    def side_x(offset: float) -> tuple[float, int]:
        if rng.random() < 0.5:
            return max(xl - offset, geo["facade_left"] + 0.3), 1
        return min(xr + offset, geo["facade_right"] - 0.3), -1

    for _ in range(int(rng.integers(0, spec.max_trees + 1))):
        x, toward = side_x(rng.uniform(0.8, 1.4))
        z = rng.uniform(9, 70)
        items.append(_Item(prop_template(rng, "tree", toward, ids), x, z, None, False, z))
    for _ in range(int(rng.integers(0, spec.max_signs + 1))):
        x, toward = side_x(0.5)
        z = rng.uniform(7, 50)
        items.append(_Item(prop_template(rng, "sign", toward, ids), x, z, None, False, z))
    spacing = rng.uniform(22, 35)
    for side in (-1, 1) if rng.random() < 0.6 else (int(rng.choice([-1, 1])),):
        x = xl - 0.4 if side < 0 else xr + 0.4
        for z in np.arange(rng.uniform(6, 6 + spacing), 130.0, spacing):
            items.append(_Item(prop_template(rng, "lamp", -side, ids), x, float(z), None, False, float(z)))
    return items


def _paint_item(cv: _Canvas, cam: _Camera, item: _Item, shadows: ImageDraw.ImageDraw) -> list[Light]:
    s = cam.f / item.z
    u, vb = cam.cx + cam.f * item.x / item.z, cam.ground_row(item.z)

    def pt(x: float, y: float) -> tuple[float, float]:
        return u + x * s, vb - y * s

    if item.annotate:  # a soft contact shadow on the ground under vehicles and people
        x0, x1, _, _ = item.template.extent()
        half_depth = 0.9 if item.template.view == "side" else 2.0
        shadows.ellipse((u + x0 * s * 1.05, cam.ground_row(item.z + half_depth),
                         u + x1 * s * 1.05, cam.ground_row(max(item.z - half_depth, 0.5))), fill=255)
    own: dict[int | None, int] = {}
    for shape, geom, color, tid in item.template.parts:
        key = item.train_id if tid is None else tid
        if key not in own:
            own[key] = cv.new_id(key, _KIND_CONST, item.z)
        ident = own[key]
        if shape == "poly":
            cv.poly([pt(x, y) for x, y in geom], color, ident)
        elif shape == "line":
            cv.line([pt(x, y) for x, y in geom[0]], color, max(1, round(geom[1] * s)), ident)
        elif shape == "ring":
            cx, cy, r, w = geom
            (a, b), (c, d) = pt(cx - r, cy + r), pt(cx + r, cy - r)
            cv.ellipse((a, b, c, d), color, ident, width=max(1, round(w * s)))
        else:
            cx, cy, rx, ry = geom
            (a, b), (c, d) = pt(cx - rx, cy + ry), pt(cx + rx, cy - ry)
            cv.ellipse((a, b, c, d), color, ident)
    item.idents = list(own.values())
    if item.annotate:
        # Painting goes far to near, so right now nothing covers this object: its full silhouette.
        item.full_px = int(np.count_nonzero(np.asarray(cv.ids) == item.idents[0]))
    return [Light(*pt(x, y), max(0.8, r * s), kind, item.z) for x, y, r, kind in item.template.lights]


def _depth_map(cv: _Canvas, cam: _Camera, ids: np.ndarray) -> np.ndarray:
    H, W = ids.shape
    kind = np.asarray(cv.kind, dtype=np.uint8)[ids]
    param = np.asarray(cv.param, dtype=np.float32)[ids]
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5 - cam.horizon
    cols = np.arange(W, dtype=np.float32)[None, :] + 0.5 - cam.cx
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(rows > 0, cam.f * cam.h / rows, SKY_DEPTH_M)
        facade = np.where(cols * param > 0, cam.f * param / cols, SKY_DEPTH_M)
    depth = np.full((H, W), SKY_DEPTH_M, dtype=np.float32)
    depth = np.where(kind == _KIND_GROUND, np.broadcast_to(ground, (H, W)), depth)
    depth = np.where(kind == _KIND_FACADE, facade, depth)
    depth = np.where(kind == _KIND_CONST, param, depth)
    return np.clip(depth, 0.5, SKY_DEPTH_M).astype(np.float32)


def _annotate(items: list[_Item], ids: np.ndarray, spec: MiniWeatherSpec) -> tuple[list[SceneObject], np.ndarray]:
    """Visible boxes from the id image; drop hidden objects, mark small or occluded ones difficult."""
    from scipy import ndimage

    H, W = ids.shape
    counts = np.bincount(ids.ravel(), minlength=256)
    slices = ndimage.find_objects(ids)
    inst_lut = np.zeros(256, dtype=np.uint8)
    objects: list[SceneObject] = []
    for item in items:
        if not item.annotate:
            continue
        ident = item.idents[0]
        sl = slices[ident - 1] if ident - 1 < len(slices) else None
        frac = counts[ident] / max(item.full_px, 1)
        if sl is None or frac < spec.drop_visible_frac or sl[0].stop - sl[0].start < 3:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        difficult = (1.0 - frac) > spec.max_occlusion or (y1 - y0) < spec.min_box_px * H / 180.0
        truncated = x0 == 0 or y0 == 0 or x1 == W or y1 == H
        objects.append(SceneObject(item.template.name, (float(x0), float(y0), float(x1), float(y1)),
                                   bool(difficult), float(min(frac, 1.0)), float(item.z), truncated,
                                   item.template.view))
        if len(objects) < 255:
            inst_lut[ident] = len(objects)
    return objects, inst_lut[ids]


def _finish_image(rgb: np.ndarray, mask: np.ndarray, shadow: Image.Image, rng: np.random.Generator,
                  spec: MiniWeatherSpec) -> tuple[np.ndarray, np.ndarray]:
    """Surface texture and a slight optical blur, without and with the sun's contact shadows.

    Returns float32 ``(albedo, image)`` in [0, 1]: night rendering starts from the unshadowed albedo,
    since the shadows belong to the daylight.
    """
    from PIL import ImageFilter

    H, W = mask.shape
    img = rgb.astype(np.float32)
    not_sky = (mask != SKY)[..., None]
    texture = 1.0 + spec.texture_noise * smooth_field(rng, H, W, cell=10)[..., None]
    grain = rng.standard_normal((H, W, 1), dtype=np.float32) * np.float32(spec.grain_noise * 255.0)
    img = np.where(not_sky, img * texture + grain, img)
    ground = np.isin(mask, (ROAD, SIDEWALK)).astype(np.float32)
    shade = 255.0 - 0.45 * np.asarray(shadow, dtype=np.float32) * ground
    # Blur once; the shadow factor is blurred alike, so image = albedo * shade matches a blurred shadowed image.
    albedo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.5))
    shade_img = Image.fromarray(shade.astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(0.5))
    albedo = np.asarray(albedo, dtype=np.float32) / 255.0
    return albedo, albedo * (np.asarray(shade_img, dtype=np.float32)[..., None] / 255.0)


def _build_scene(rng: np.random.Generator, height: int, width: int, spec: MiniWeatherSpec,
                 force_class: str | None) -> Scene:
    f = width * rng.uniform(0.9, 1.0)
    cam = _Camera(f, width * (0.5 + rng.uniform(-0.04, 0.04)), height * rng.uniform(0.4, 0.46), CAMERA_HEIGHT_M)
    lanes = int(rng.choice([2, 3, 4], p=[0.3, 0.45, 0.25]))
    road_w = lanes * LANE_WIDTH_M
    xl = -road_w / 2 + rng.uniform(-0.3, 0.3) * road_w / 2
    geo = {"lanes": lanes, "road_left": xl, "road_right": xl + road_w,
           "facade_left": xl - rng.uniform(2.5, 4.5), "facade_right": xl + road_w + rng.uniform(2.5, 4.5)}
    cv = _Canvas(_sky(rng, height, width, cam.horizon))
    _draw_street(cv, cam, rng, geo)
    items = _place_props(rng, geo, spec) + _place_objects(rng, cam, geo, spec, height, width, force_class)
    items.sort(key=lambda it: -it.order)
    shadow_img = Image.new("L", (width, height), 0)
    shadows = ImageDraw.Draw(shadow_img)
    lights: list[tuple[Light, _Item]] = []
    for item in items:
        lights += [(light, item) for light in _paint_item(cv, cam, item, shadows)]
    ids = np.asarray(cv.ids)
    mask = np.asarray(cv.cls, dtype=np.uint8)[ids]
    objects, instances = _annotate(items, ids, spec)
    visible_lights = []
    for light, item in lights:  # a lamp hidden behind something nearer does not glow
        xi, yi = int(light.x), int(light.y)
        if 0 <= xi < width and 0 <= yi < height and ids[yi, xi] in item.idents:
            visible_lights.append(light)
    lamps = [(it.x + it.template.lights[0][0], it.template.lights[0][1], it.z)
             for it in items if it.template.name == "lamp"]
    albedo, image = _finish_image(np.asarray(cv.rgb), mask, shadow_img, rng, spec)
    return Scene(
        image=image,
        albedo=albedo,
        mask=mask,
        depth=_depth_map(cv, cam, ids),
        instances=instances,
        windows=np.asarray(cv.win).copy(),
        objects=objects,
        lights=visible_lights,
        lamps=lamps,
        camera={"f": cam.f, "cx": cam.cx, "horizon": cam.horizon, "height": cam.h},
    )


def render_scene(seed, height: int = 180, width: int = 320, spec: MiniWeatherSpec | None = None,
                 force_class: str | None = None) -> Scene:
    """Render one clear-day street scene with its mask, depth map, boxes and light sources.

    Args:
        seed: an int (or a ``numpy.random.Generator``, used as is) that fixes the scene.
        height, width: image size in pixels; the geometry scales with the width.
        spec: difficulty knobs (``MiniWeatherSpec()`` by default).
        force_class: a DWD class the scene must contain as a non-difficult annotated object.
    Returns:
        a ``Scene``; the same seed always gives the same scene.
    """
    spec = spec or MiniWeatherSpec()
    if force_class is not None and force_class not in DWD_CLASSES:
        raise KeyError(f"unknown class {force_class!r}; valid classes: {', '.join(DWD_CLASSES)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.Generator(np.random.PCG64(seed))
    scene = _build_scene(rng, height, width, spec, force_class)
    for _ in range(20):  # rare: the forced object ended up hidden behind a tree or a nearer object
        if force_class is None or any(o.name == force_class and not o.difficult for o in scene.objects):
            break
        scene = _build_scene(rng, height, width, spec, force_class)
    return scene
