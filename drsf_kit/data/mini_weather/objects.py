"""Silhouettes of the mini-weather objects and props, in metres, as upright fronto-parallel cut-outs.

Each builder returns a ``Template``: coloured parts in a local frame (x to the right, y up, origin at
the ground contact point), the lamps it carries (for night rendering) and the class it is annotated as.
Vehicles come in side, rear and front views; two-wheelers and riders in side view. The shapes are
chosen so that classes differ in outline, not only in size: a bus is a long tall box with a window
band, a truck a cab plus a cargo box, a car a low body under a narrower cabin, a motorbike a heavy
filled body between two wheels, a bicycle a thin frame between two rings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Approximate full heights (metres), used to keep far objects above the minimum pixel height.
CLASS_HEIGHT_M = {"bus": 3.1, "truck": 3.3, "car": 1.45, "motor": 1.1, "bike": 1.0, "person": 1.7,
                  "rider": 1.6}

_GLASS = (48, 58, 72)
_TYRE = (24, 24, 26)
_DARK = (42, 42, 46)
_HEAD_LAMP = (235, 232, 205)
_TAIL_LAMP = (170, 22, 22)
_CAR_COLORS = ((190, 30, 30), (30, 60, 150), (228, 228, 228), (38, 38, 42), (150, 152, 158),
               (25, 95, 55), (205, 165, 45), (110, 30, 40), (90, 100, 115))
_BUS_COLORS = ((200, 40, 30), (230, 180, 30), (40, 110, 190), (30, 140, 80), (235, 235, 235))
_CARGO_COLORS = ((236, 236, 236), (196, 198, 200), (60, 90, 160), (180, 60, 40), (90, 110, 70))
_CAB_COLORS = ((200, 30, 30), (30, 60, 150), (235, 235, 230), (240, 160, 20), (60, 60, 64))
_SKIN = ((240, 200, 170), (205, 155, 115), (150, 100, 65), (95, 62, 42))
_HAIR = ((25, 20, 18), (70, 45, 25), (150, 110, 60), (110, 110, 110))


@dataclass
class Template:
    """Parts ``(shape, geometry, color, train_id or None)`` in metres, lamps ``(x, y, r, kind)``."""

    name: str  # DWD class, or "tree" / "sign" / "lamp" for unannotated props
    view: str
    parts: list = field(default_factory=list)
    lights: list = field(default_factory=list)

    def add(self, shape: str, geom, color, train_id: int | None = None) -> None:
        """Append a part; ``train_id`` None means the template's own class (props give theirs)."""
        self.parts.append((shape, geom, tuple(int(c) for c in color), train_id))

    def rect(self, x0: float, y0: float, x1: float, y1: float, color, train_id: int | None = None) -> None:
        """Append an axis-aligned rectangle part."""
        self.add("poly", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, train_id)

    def lamp(self, x: float, y: float, r: float, kind: str) -> None:
        """Append a vehicle lamp: a small painted disc plus a light source for night rendering."""
        self.lights.append((x, y, r, kind))
        self.add("ell", (x, y, r, r * 0.8), _HEAD_LAMP if kind in ("head", "lamp") else _TAIL_LAMP)

    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of all parts, in metres."""
        xs, ys = [], []
        for shape, geom, _, _ in self.parts:
            if shape == "poly":
                xs += [p[0] for p in geom]
                ys += [p[1] for p in geom]
            elif shape == "line":
                pts, w = geom
                xs += [p[0] - w / 2 for p in pts] + [p[0] + w / 2 for p in pts]
                ys += [p[1] - w / 2 for p in pts] + [p[1] + w / 2 for p in pts]
            else:  # "ell" (cx, cy, rx, ry) or "ring" (cx, cy, r, width)
                cx, cy, rx, ry = geom
                ry = rx if shape == "ring" else ry
                xs += [cx - rx, cx + rx]
                ys += [cy - ry, cy + ry]
        return min(xs), max(xs), max(0.0, min(ys)), max(ys)

    def mirrored(self) -> Template:
        """The same template facing the other way (x -> -x)."""
        out = Template(self.name, self.view)
        for shape, geom, color, tid in self.parts:
            if shape == "poly":
                geom = [(-x, y) for x, y in geom]
            elif shape == "line":
                geom = ([(-x, y) for x, y in geom[0]], geom[1])
            else:
                geom = (-geom[0],) + tuple(geom[1:])
            out.parts.append((shape, geom, color, tid))
        out.lights = [(-x, y, r, k) for x, y, r, k in self.lights]
        return out


def _pick(rng: np.random.Generator, palette, jitter: float = 12.0) -> tuple[int, ...]:
    base = palette[rng.integers(len(palette))]
    noise = rng.normal(0, jitter, 3)
    return tuple(int(min(255.0, max(0.0, b + n))) for b, n in zip(base, noise))


def _darker(color, f: float = 0.7) -> tuple[int, ...]:
    return tuple(int(c * f) for c in color)


def _car(rng: np.random.Generator, view: str) -> Template:
    t = Template("car", view)
    color, top = _pick(rng, _CAR_COLORS), rng.uniform(1.35, 1.6)
    if view == "side":
        L = rng.uniform(3.9, 4.7)
        t.rect(-L / 2 + 0.2, 0.16, L / 2 - 0.2, 0.34, _DARK)
        t.add("poly", [(-L / 2, 0.3), (-L / 2, 0.82), (-L / 2 + 0.25, 0.9), (L / 2 - 0.4, 0.9), (L / 2, 0.74),
                       (L / 2, 0.3)], color)
        t.add("poly", [(-L / 2 + 0.45, 0.88), (-L / 2 + 0.95, top), (L / 2 - 1.6, top), (L / 2 - 0.95, 0.88)], color)
        t.add("poly", [(-L / 2 + 0.62, 0.94), (-L / 2 + 1.02, top - 0.07), (L / 2 - 1.66, top - 0.07),
                       (L / 2 - 1.12, 0.94)], _GLASS)
        xp = (L / 2 - 1.66 - L / 2 + 1.02) / 2 + 0.15
        t.add("line", ([(xp, 0.94), (xp, top - 0.07)], 0.09), color)
        for xw in (L / 2 - 0.82, -L / 2 + 0.82):
            t.add("ell", (xw, 0.32, 0.32, 0.32), _TYRE)
            t.add("ell", (xw, 0.32, 0.15, 0.15), (165, 165, 170))
        t.lamp(L / 2 - 0.07, 0.7, 0.09, "head")
        t.lamp(-L / 2 + 0.06, 0.76, 0.08, "tail")
        return t
    w = rng.uniform(1.7, 1.85)
    for s in (-1, 1):
        t.rect(s * (w / 2 - 0.05), 0.0, s * (w / 2 - 0.33), 0.32, _TYRE)
    t.add("poly", [(-w / 2, 0.25), (-w / 2, 0.85), (-w / 2 + 0.1, 0.93), (w / 2 - 0.1, 0.93), (w / 2, 0.85),
                   (w / 2, 0.25)], color)
    t.add("poly", [(-w / 2 + 0.1, 0.9), (-w / 2 + 0.3, top), (w / 2 - 0.3, top), (w / 2 - 0.1, 0.9)], color)
    t.add("poly", [(-w / 2 + 0.2, 0.96), (-w / 2 + 0.37, top - 0.06), (w / 2 - 0.37, top - 0.06),
                   (w / 2 - 0.2, 0.96)], _GLASS)
    t.rect(-w / 2, 0.25, w / 2, 0.4, _darker(color, 0.6))
    if view == "front":
        t.rect(-0.42, 0.5, 0.42, 0.7, _DARK)
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.25), 0.75, 0.1, "head")
    else:
        t.rect(-0.25, 0.45, 0.25, 0.58, (220, 220, 210))
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.2), 0.74, 0.09, "tail")
    return t


def _bus(rng: np.random.Generator, view: str) -> Template:
    t = Template("bus", view)
    color, top = _pick(rng, _BUS_COLORS), rng.uniform(2.95, 3.3)
    accent = _pick(rng, _BUS_COLORS, 30)
    if view == "side":
        L = rng.uniform(10.0, 12.0)
        t.add("poly", [(-L / 2, 0.3), (-L / 2, top - 0.1), (-L / 2 + 0.15, top), (L / 2 - 0.2, top),
                       (L / 2, top - 0.25), (L / 2, 0.3)], color)
        t.rect(-L / 2, 1.05, L / 2, 1.3, accent)
        for x0 in np.arange(-L / 2 + 0.45, L / 2 - 1.9, 1.32):
            t.rect(x0, 1.45, x0 + 1.15, 2.55, _GLASS)
        t.rect(L / 2 - 1.55, 0.42, L / 2 - 0.7, 2.6, _GLASS)  # door
        t.rect(-L / 2, 0.3, L / 2, 0.5, _DARK)
        for xw in (L / 2 - 2.4, -L / 2 + 2.5):
            t.add("ell", (xw, 0.5, 0.5, 0.5), _TYRE)
            t.add("ell", (xw, 0.5, 0.24, 0.24), (150, 150, 150))
        t.lamp(L / 2 - 0.08, 0.8, 0.12, "head")
        t.lamp(-L / 2 + 0.08, 0.9, 0.12, "tail")
        return t
    w = 2.55
    for s in (-1, 1):
        t.rect(s * (w / 2 - 0.08), 0.0, s * (w / 2 - 0.5), 0.5, _TYRE)
    t.add("poly", [(-w / 2, 0.3), (-w / 2, top - 0.1), (-w / 2 + 0.1, top), (w / 2 - 0.1, top), (w / 2, top - 0.1),
                   (w / 2, 0.3)], color)
    t.rect(-w / 2, 0.3, w / 2, 0.55, _DARK)
    if view == "front":
        t.rect(-w / 2 + 0.12, 1.05, w / 2 - 0.12, top - 0.5, _GLASS)
        t.rect(-w / 2 + 0.3, top - 0.42, w / 2 - 0.3, top - 0.12, (215, 150, 30))
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.3), 0.8, 0.13, "head")
    else:
        t.rect(-w / 2 + 0.2, 1.9, w / 2 - 0.2, top - 0.25, _GLASS)
        t.rect(-0.8, 0.7, 0.8, 1.4, _darker(color, 0.65))
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.18), 0.9, 0.12, "tail")
    return t


def _truck(rng: np.random.Generator, view: str) -> Template:
    t = Template("truck", view)
    cab, cargo = _pick(rng, _CAB_COLORS), _pick(rng, _CARGO_COLORS, 8)
    box_top = rng.uniform(3.2, 3.8)
    if view == "side":
        L = rng.uniform(6.5, 9.0)
        t.rect(-L / 2, 0.45, L / 2 - 0.2, 0.82, _DARK)
        t.rect(-L / 2, 0.8, L / 2 - 2.45, box_top, cargo)
        for xr in np.arange(-L / 2 + 1.2, L / 2 - 2.6, 1.2):  # ribs of the cargo box
            t.add("line", ([(xr, 0.85), (xr, box_top - 0.05)], 0.06), _darker(cargo, 0.8))
        t.add("poly", [(L / 2 - 2.3, 0.55), (L / 2 - 2.3, 2.95), (L / 2 - 0.35, 2.95), (L / 2, 2.3), (L / 2, 0.55)],
              cab)
        t.add("poly", [(L / 2 - 1.3, 1.75), (L / 2 - 1.3, 2.75), (L / 2 - 0.42, 2.75), (L / 2 - 0.12, 2.2),
                       (L / 2 - 0.12, 1.75)], _GLASS)
        for xw in (L / 2 - 1.3, -L / 2 + 1.1, -L / 2 + 2.2):
            t.add("ell", (xw, 0.5, 0.5, 0.5), _TYRE)
            t.add("ell", (xw, 0.5, 0.22, 0.22), (150, 150, 150))
        t.lamp(L / 2 - 0.07, 0.85, 0.11, "head")
        t.lamp(-L / 2 + 0.07, 0.95, 0.1, "tail")
        return t
    w = 2.5
    for s in (-1, 1):
        t.rect(s * (w / 2 - 0.1), 0.0, s * (w / 2 - 0.65), 0.55, _TYRE)
    if view == "front":
        t.rect(-w / 2, 2.6, w / 2, box_top, cargo)
        t.rect(-w / 2 + 0.05, 0.5, w / 2 - 0.05, 2.95, cab)
        t.rect(-w / 2 + 0.17, 1.85, w / 2 - 0.17, 2.75, _GLASS)
        t.rect(-0.6, 0.8, 0.6, 1.55, _DARK)
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.3), 0.9, 0.12, "head")
    else:
        t.rect(-w / 2, 0.75, w / 2, box_top, cargo)
        t.add("line", ([(0.0, 0.8), (0.0, box_top - 0.05)], 0.05), _darker(cargo, 0.5))
        for s in (-1, 1):
            t.add("line", ([(s * w / 4, 0.9), (s * w / 4, box_top - 0.15)], 0.06), _darker(cargo, 0.75))
        t.rect(-w / 2 + 0.1, 0.45, w / 2 - 0.1, 0.72, _DARK)
        for s in (-1, 1):
            t.lamp(s * (w / 2 - 0.25), 0.6, 0.1, "tail")
    return t


def _motor(rng: np.random.Generator) -> Template:
    t = Template("motor", "side")
    color = _pick(rng, _CAR_COLORS)
    for xw in (0.68, -0.68):
        t.add("ell", (xw, 0.3, 0.3, 0.3), _TYRE)
        t.add("ell", (xw, 0.3, 0.16, 0.16), (120, 120, 125))
    t.add("line", ([(0.68, 0.3), (0.5, 1.0)], 0.08), (170, 170, 175))
    t.add("line", ([(-0.68, 0.3), (-0.05, 0.45)], 0.08), _DARK)
    t.add("line", ([(-0.2, 0.32), (-0.85, 0.45)], 0.09), (165, 165, 165))
    t.add("poly", [(-0.25, 0.25), (0.35, 0.25), (0.42, 0.62), (-0.3, 0.62)], (62, 62, 68))
    t.add("poly", [(-0.1, 0.6), (0.45, 0.6), (0.56, 0.95), (0.3, 0.99), (-0.15, 0.86)], color)
    t.add("poly", [(-0.82, 0.7), (-0.3, 0.6), (-0.3, 0.8), (-0.86, 0.86)], color)
    t.add("poly", [(-0.75, 0.8), (-0.1, 0.82), (-0.1, 0.9), (-0.7, 0.9)], (30, 30, 30))
    t.add("line", ([(0.5, 1.0), (0.36, 1.08)], 0.06), _DARK)
    t.lamp(0.58, 0.9, 0.08, "head")
    t.lamp(-0.86, 0.8, 0.05, "tail")
    return t


def _bike(rng: np.random.Generator) -> Template:
    t = Template("bike", "side")
    color = _pick(rng, _CAR_COLORS + ((30, 160, 200), (220, 90, 30)))
    for xw in (0.56, -0.56):
        t.add("ring", (xw, 0.35, 0.35, 0.07), _TYRE)
        t.add("ell", (xw, 0.35, 0.05, 0.05), (150, 150, 150))
    bb, seat, head = (0.0, 0.3), (-0.14, 0.86), (0.44, 0.86)
    for pts in ([(-0.56, 0.35), bb, seat, (-0.56, 0.35)], [bb, (0.45, 0.8)], [seat, head, (0.56, 0.35)]):
        t.add("line", (pts, 0.07), color)
    t.add("poly", [(-0.3, 0.9), (-0.02, 0.9), (-0.06, 0.96), (-0.28, 0.96)], (30, 30, 30))
    t.add("line", ([(-0.14, 0.84), (-0.15, 0.92)], 0.05), _DARK)
    t.add("line", ([head, (0.42, 1.0), (0.3, 1.03)], 0.06), _DARK)
    return t


def _person(rng: np.random.Generator, view: str) -> Template:
    t = Template("person", view)
    h = rng.uniform(1.55, 1.9)
    shirt, pants = _pick(rng, _CAR_COLORS + _BUS_COLORS, 35), _pick(rng, ((40, 40, 60), (70, 60, 50), (30, 30, 30),
                                                                        (60, 80, 120), (140, 130, 110)), 15)
    skin, hair = _pick(rng, _SKIN, 8), _pick(rng, _HAIR, 8)
    hip = 0.5 * h
    if view == "front":
        spread = rng.uniform(0.0, 0.08)
        for s in (-1, 1):
            t.add("line", ([(s * 0.09, hip), (s * (0.11 + spread), 0.06)], 0.14), pants)
            t.add("ell", (s * (0.12 + spread), 0.04, 0.08, 0.045), (25, 25, 25))
            t.add("line", ([(s * 0.2, h - 0.31), (s * 0.27, hip + 0.02)], 0.09), _darker(shirt, 0.85))
        t.add("poly", [(-0.22, h - 0.27), (0.22, h - 0.27), (0.17, hip), (-0.17, hip)], shirt)
    else:
        step = rng.uniform(0.1, 0.3)
        t.add("line", ([(0.0, hip), (-step, 0.05)], 0.14), _darker(pants, 0.75))
        t.add("line", ([(0.0, h - 0.3), (-step * 0.8, hip + 0.05)], 0.09), _darker(shirt, 0.75))
        t.add("poly", [(-0.12, h - 0.27), (0.12, h - 0.27), (0.1, hip), (-0.1, hip)], shirt)
        t.add("line", ([(0.0, hip), (step, 0.05)], 0.14), pants)
        t.add("line", ([(0.0, h - 0.3), (step * 0.8, hip + 0.05)], 0.09), shirt)
        for x in (-step, step):
            t.add("ell", (x + 0.05, 0.04, 0.09, 0.045), (25, 25, 25))
    t.add("ell", (0.0, h - 0.13, 0.095, 0.125), skin)
    t.add("ell", (0.0, h - 0.06, 0.1, 0.07), hair)
    return t


def rider_template(rng: np.random.Generator, vehicle: str) -> Template:
    """The human on a ``"bike"`` or ``"motor"`` (side view, facing +x), to paint over the vehicle."""
    t = Template("rider", "side")
    shirt, pants = _pick(rng, _CAR_COLORS + _BUS_COLORS, 35), _pick(rng, ((40, 40, 60), (30, 30, 30), (60, 80, 120)))
    if vehicle == "motor":
        hip, shoulder, head, r = (-0.35, 0.92), (-0.05, 1.4), (0.03, 1.55), 0.14
        leg, arm = [hip, (0.08, 0.78), (0.02, 0.45)], [shoulder, (0.2, 1.15), (0.38, 1.06)]
        helmet = True
    else:
        hip, shoulder, head, r = (-0.15, 0.98), (0.12, 1.46), (0.2, 1.6), 0.11
        leg, arm = [hip, (0.16, 0.72), (0.05, 0.36)], [shoulder, (0.3, 1.22), (0.36, 1.02)]
        helmet = rng.random() < 0.5
    far_leg = [hip, (leg[1][0] - 0.12, leg[1][1] - 0.05), (leg[2][0] - 0.12, leg[2][1] + 0.02)]
    t.add("line", (far_leg, 0.13), _darker(pants, 0.7))
    t.add("line", ([hip, shoulder], 0.32), shirt)
    t.add("line", (leg, 0.14), pants)
    t.add("line", (arm, 0.09), _darker(shirt, 0.85))
    head_color = _pick(rng, _CAR_COLORS, 10) if helmet else _pick(rng, _SKIN, 8)
    t.add("ell", (head[0], head[1], r, r * 1.05), head_color)
    return t


def object_template(rng: np.random.Generator, name: str, view: str) -> Template:
    """A random instance of DWD class ``name`` in ``view`` ("side", "rear" or "front"), facing +x."""
    if name == "car":
        return _car(rng, view)
    if name == "bus":
        return _bus(rng, view)
    if name == "truck":
        return _truck(rng, view)
    if name == "motor":
        return _motor(rng)
    if name == "bike":
        return _bike(rng)
    if name == "person":
        return _person(rng, view)
    raise KeyError(f"no template for class {name!r}")


def prop_template(rng: np.random.Generator, kind: str, toward_road: int, ids: dict) -> Template:
    """A tree, a traffic-sign pole or a street lamp; ``ids`` maps "pole"/"sign"/"vegetation" to train ids.

    ``toward_road`` is +1 when the road lies to the right of the prop (the lamp arm points there).
    """
    t = Template(kind, "front")
    if kind == "tree":
        trunk_h = rng.uniform(2.0, 3.2)
        t.add("line", ([(0.0, 0.0), (0.0, trunk_h + 0.5)], rng.uniform(0.2, 0.35)), (85, 65, 45), ids["vegetation"])
        green = np.array([70, 110, 45]) + rng.normal(0, 15, 3)
        for _ in range(3):
            cx, cy = rng.uniform(-0.8, 0.8), trunk_h + rng.uniform(1.0, 2.2)
            rx = rng.uniform(1.2, 2.2)
            shade = np.minimum(green * rng.uniform(0.75, 1.2), 255.0)
            t.add("ell", (cx, cy, rx, rx * rng.uniform(0.8, 1.1)), shade, ids["vegetation"])
    elif kind == "sign":
        top = rng.uniform(2.6, 3.2)
        t.add("line", ([(0.0, 0.0), (0.0, top)], 0.09), (140, 140, 145), ids["pole"])
        r = rng.uniform(0.3, 0.42)
        style = rng.integers(3)
        if style == 0:  # prohibition: red ring on white
            t.add("ell", (0.0, top, r, r), (200, 30, 30), ids["sign"])
            t.add("ell", (0.0, top, r * 0.72, r * 0.72), (235, 235, 235), ids["sign"])
        elif style == 1:  # mandatory: blue disc
            t.add("ell", (0.0, top, r, r), (30, 80, 190), ids["sign"])
        else:  # warning: triangle
            t.add("poly", [(-r, top - 0.8 * r), (r, top - 0.8 * r), (0.0, top + r)], (230, 200, 40), ids["sign"])
    else:  # street lamp: a tall pole with an arm reaching over the road
        top, arm = rng.uniform(6.5, 8.0), rng.uniform(1.2, 1.8) * toward_road
        t.add("line", ([(0.0, 0.0), (0.0, top), (arm * 0.4, top + 0.3), (arm, top + 0.3)], 0.14),
              (95, 95, 100), ids["pole"])
        t.add("ell", (arm, top + 0.22, 0.3, 0.12), (70, 70, 75), ids["pole"])
        t.lights.append((arm, top + 0.12, 0.15, "lamp"))
    return t


__all__ = ["CLASS_HEIGHT_M", "Template", "object_template", "prop_template", "rider_template"]
