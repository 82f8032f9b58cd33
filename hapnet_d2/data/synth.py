"""Built-in synthetic RGB-thermal street scenes in the MFNet layout.

Nobody can download MFNet on a fresh machine, so this module draws a small benchmark with
MFNet's nine classes on which the whole pipeline runs on a CPU, and on which fusing thermal
with RGB beats either modality alone:

* by day the RGB image shows every class with its own (jittered, not unique) colours under a
  lighting gradient and sensor noise;
* by night the RGB image is dark and noisy; cars, people and bikes copy the colour of the
  background they hide (their contrast is below the noise, apart from a few car lights), while
  the painted classes (lane markings, car stops, guardrails, cones, bumps) reflect a little
  light and stay faintly visible;
* the thermal image is a smooth background temperature field (warmer by day) plus noise in
  which people are the warmest objects and cars (engine, wheels) and bikes are warm; painted
  classes have no heat signature, so thermal alone cannot find them.

Every image is drawn from its own generator seeded by ``(seed, index)``, so the output is
byte-identical for a seed. The layout is MFNet's::

    DIR/images/NAME.png   4-channel uint8 PNG (R, G, B, thermal)
    DIR/labels/NAME.png   uint8 class ids 0..8
    DIR/{train,val,test,test_day,test_night}.txt   one NAME per line, NAME like 00012D / 00013N
    DIR/synth_meta.json   the generation parameters (written last: marks a complete dataset)

Command line: ``python -m hapnet_d2.data.synth --out DIR [--seed S] [--num-train N]
[--num-val V] [--num-test M] [--size W H]``.
"""
import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np

__all__ = ["SynthSpec", "render_sample", "generate_dataset", "ensure_synth_dataset", "main"]

logger = logging.getLogger(__name__)

# MFNet class ids
UNLABELED, CAR, PERSON, BIKE, CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP = range(9)
SPLITS = ("train", "val", "test", "test_day", "test_night")
META_FILE = "synth_meta.json"
MIN_SIZE = (64, 48)  # (W, H): below this the smallest objects shrink under ~6 px


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic dataset; half of every split is day, half night.

    Attributes:
        seed (int): base seed; image ``i`` is drawn from ``np.random.default_rng([seed, i])``.
        width (int): image width in pixels (160..320 intended).
        height (int): image height in pixels (120..240 intended).
        num_train (int): number of training images.
        num_val (int): number of validation images.
        num_test (int): number of test images (split into ``test_day`` and ``test_night``).
    """

    seed: int = 0
    width: int = 160
    height: int = 120
    num_train: int = 600
    num_val: int = 100
    num_test: int = 200

    def __post_init__(self):
        if self.width < MIN_SIZE[0] or self.height < MIN_SIZE[1]:
            raise ValueError(
                f"synthetic image size {self.width}x{self.height} (WxH) is too small; "
                f"use at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (160x120 to 320x240 intended)"
            )
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# ---------------------------------------------------------------------------- scene layers
class _Canvas:
    """The layers of one scene before the camera models turn them into images.

    Attributes:
        albedo (np.ndarray): float32 ``HxWx3`` colour under daylight (0-255).
        heat (np.ndarray): float32 ``HxW`` thermal level (0-255) before sensor effects.
        label (np.ndarray): uint8 ``HxW`` class ids.
        hidden (np.ndarray): bool ``HxW``; warm objects whose night RGB copies the background.
        night_offset (np.ndarray): float32 ``HxWx3``; the small night contrast of hidden objects.
        reflective (np.ndarray): bool ``HxW``; painted classes that reflect light at night.
        glow (np.ndarray): float32 ``HxWx3``; light sources added at night (lamps, car lights).
        shade (np.ndarray): float32 ``HxW``; daylight shadows (multiplicative).
        background (np.ndarray or None): snapshot of ``albedo`` before any labelled object.
    """

    def __init__(self, height, width):
        self.height, self.width = height, width
        self.albedo = np.zeros((height, width, 3), np.float32)
        self.heat = np.zeros((height, width), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.hidden = np.zeros((height, width), bool)
        self.night_offset = np.zeros((height, width, 3), np.float32)
        self.reflective = np.zeros((height, width), bool)
        self.glow = np.zeros((height, width, 3), np.float32)
        self.shade = np.ones((height, width), np.float32)
        self.background = None

    def mask(self, draw):
        """Rasterise a shape: ``draw(m)`` draws value 1 into a uint8 ``HxW`` array with cv2.

        Returns:
            np.ndarray: bool ``HxW``.
        """
        m = np.zeros((self.height, self.width), np.uint8)
        draw(m)
        return m.astype(bool)

    def poly(self, points):
        """Bool ``HxW`` mask of a filled polygon given as ``[(x, y), ...]`` in pixels."""
        pts = np.round(np.asarray(points, np.float64)).astype(np.int32)
        return self.mask(lambda m: cv2.fillPoly(m, [pts], 1))

    def disc(self, x, y, r):
        """Bool ``HxW`` mask of a filled disc of radius ``r`` (pixels) centred at ``(x, y)``."""
        return self.mask(lambda m: cv2.circle(m, (round(x), round(y)), max(1, round(r)), 1, -1))

    def rect(self, x0, y0, x1, y1):
        """Bool ``HxW`` mask of the axis-aligned box ``[x0, x1] x [y0, y1]`` (pixels)."""
        return self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def paint(self, mask, colour, heat=None, label=None, night_offset=None, reflective=False):
        """Paint one part of the scene.

        Args:
            mask (np.ndarray): bool ``HxW`` pixels of the part.
            colour (array-like): RGB daylight colour (3 floats, 0-255).
            heat (float or None): thermal level; ``None`` keeps what is behind (no heat
                signature).
            label (int or None): class id; ``None`` keeps the label behind.
            night_offset (array-like or None): 3 floats; when given, the part is a warm object
                hidden in night RGB whose only contrast is this offset.
            reflective (bool): the part reflects light at night (painted classes).
        """
        self.albedo[mask] = np.clip(colour, 0, 255)
        if heat is not None:
            self.heat[mask] = heat
        if label is not None:
            self.label[mask] = label
        self.hidden[mask] = night_offset is not None
        if night_offset is not None:
            self.night_offset[mask] = night_offset
        self.reflective[mask] = reflective


def _jitter(rng, colour, amount):
    """``colour`` (3 floats) with a uniform per-channel jitter of +-``amount``."""
    return np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _smooth_field(rng, height, width, cells, amplitude):
    """Smooth random field: a coarse uniform grid upsampled bicubically.

    Returns:
        np.ndarray: float32 ``HxW`` with values in about ``[-amplitude, amplitude]``.
    """
    grid = rng.uniform(-amplitude, amplitude, (cells[0], cells[1])).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------- geometry
class _Road:
    """Perspective road: ``t`` in [0, 1] runs from the horizon to the image bottom, ``u`` in
    [0, 1] from the left to the right road edge (values outside are off the road)."""

    def __init__(self, rng, height, width):
        self.horizon = height * rng.uniform(0.33, 0.45)
        self.height = height
        vx = width * rng.uniform(0.35, 0.65)
        top_half = width * rng.uniform(0.02, 0.05)
        self.top = (vx - top_half, vx + top_half)
        self.bottom = (width * rng.uniform(-0.35, 0.1), width * rng.uniform(0.9, 1.35))

    def y(self, t):
        return self.horizon + t * (self.height - self.horizon)

    def x(self, u, t):
        left = self.top[0] + t * (self.bottom[0] - self.top[0])
        right = self.top[1] + t * (self.bottom[1] - self.top[1])
        return left + u * (right - left)

    def width_at(self, t):
        """Road width in pixels at depth ``t``."""
        return self.x(1.0, t) - self.x(0.0, t)

    def strip(self, u, t0, t1, half_u):
        """Polygon of a strip centred on ``u`` from depth ``t0`` to ``t1``, ``2*half_u`` wide."""
        return [
            (self.x(u - half_u, t0), self.y(t0)),
            (self.x(u + half_u, t0), self.y(t0)),
            (self.x(u + half_u, t1), self.y(t1)),
            (self.x(u - half_u, t1), self.y(t1)),
        ]


# ---------------------------------------------------------------------------- background
def _draw_background(cv, rng, road, night):
    """Sky, buildings with windows, sidewalks, road texture, trees, poles and signs (label 0).

    Also sets the background temperature (day warmer than night, sky coldest).
    """
    h, w = cv.height, cv.width
    hz = int(round(road.horizon))
    ambient = rng.uniform(70, 95) if night else rng.uniform(115, 145)
    rows = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None, None]
    sky_top, sky_low = _jitter(rng, (110, 150, 205), 25), _jitter(rng, (200, 210, 220), 20)
    cv.albedo[:hz] = sky_top * (1 - rows) + sky_low * rows
    cv.heat[:hz] = ambient - rng.uniform(40, 55)

    ground = cv.poly([(0, hz), (w, hz), (w, h), (0, h)])
    cv.paint(ground, _jitter(rng, (150, 148, 140), 20), heat=ambient + rng.uniform(-6, 6))
    tiles = _smooth_field(rng, h, w, (12, 16), 12)[ground]
    cv.albedo[ground] += tiles[:, None]

    x = rng.uniform(-10, 0)
    while x < w:
        bw = w * rng.uniform(0.1, 0.3)
        top = hz - (hz * rng.uniform(0.2, 0.85))
        facade = _jitter(rng, rng.choice([(170, 90, 70), (200, 190, 160), (140, 140, 150),
                                          (110, 120, 100), (215, 200, 120)]), 25)
        b_heat = ambient + rng.uniform(-10, 6)
        cv.paint(cv.rect(x, top, x + bw, hz + 1), facade, heat=b_heat)
        win = max(2.0, h / 50)
        grid = [(wx, wy) for wy in np.arange(top + win, hz - win, 2.2 * win)
                for wx in np.arange(x + win, x + bw - win, 2.2 * win)]
        lit = rng.random(len(grid)) < (0.3 if night else 0.0)
        for on in (False, True):
            boxes = [g for g, is_lit in zip(grid, lit) if is_lit == on]
            windows = cv.mask(lambda m: [cv2.rectangle(m, (round(wx), round(wy)),
                                                       (round(wx + win), round(wy + win)), 1, -1)
                                         for wx, wy in boxes])
            cv.paint(windows, _jitter(rng, (60, 70, 90), 20), heat=b_heat + (18 if on else 4))
            if on:
                cv.glow[windows] = _jitter(rng, (40, 35, 15), 8)
        x += bw + rng.uniform(0, 6)

    asphalt = _jitter(rng, (95, 95, 100), 15)
    road_mask = cv.poly([(road.top[0], road.horizon), (road.top[1], road.horizon),
                         (road.bottom[1], h), (road.bottom[0], h)])
    road_heat = ambient + rng.uniform(3, 12)
    cv.paint(road_mask, asphalt, heat=road_heat)
    cv.albedo[road_mask] += _smooth_field(rng, h, w, (10, 14), 10)[road_mask][:, None]
    for _ in range(rng.integers(1, 5)):  # asphalt patches and manholes
        t, u = rng.uniform(0.2, 1.0), rng.uniform(0.0, 1.0)
        r = road.width_at(t) * rng.uniform(0.03, 0.08)
        cv.paint(cv.disc(road.x(u, t), road.y(t), r), asphalt * rng.uniform(0.7, 1.2),
                 heat=road_heat + rng.uniform(-4, 4))

    for _ in range(rng.integers(0, 4)):  # trees
        tx, ty = rng.uniform(0, w), hz + rng.uniform(-2, 4)
        r = h * rng.uniform(0.06, 0.14)
        cv.paint(cv.rect(tx - r / 6, ty - r, tx + r / 6, ty), (90, 60, 40), heat=ambient - 5)
        cv.paint(cv.disc(tx, ty - 1.6 * r, r), _jitter(rng, (60, 120, 50), 25),
                 heat=ambient - 12)
    for _ in range(rng.integers(0, 4)):  # poles with signs or lamps
        px, top = rng.uniform(0, w), hz - h * rng.uniform(0.15, 0.35)
        pw = max(1.5, w / 100)
        cv.paint(cv.rect(px - pw, top, px + pw, hz + h * 0.05), (70, 70, 75), heat=ambient - 3)
        if rng.random() < 0.5:
            s = h * rng.uniform(0.04, 0.07)
            sign = rng.choice([(200, 40, 40), (40, 80, 200), (230, 190, 40), (240, 120, 40)])
            cv.paint(cv.rect(px - s, top, px + s, top + 1.4 * s), _jitter(rng, sign, 20),
                     heat=ambient - 3)
        else:
            cv.paint(cv.disc(px, top, 2 * pw), (230, 230, 200), heat=ambient + 30)
            cv.glow += (np.exp(-((np.arange(w)[None] - px) ** 2 + (np.arange(h)[:, None] - top)
                                 ** 2) / (2 * (h * 0.08) ** 2)) * 45)[..., None] * (1, 0.9, 0.6)
    cv.background = cv.albedo.copy()
    return ambient


# ---------------------------------------------------------------------------- labelled classes
def _draw_markings(cv, rng, road):
    """Lane edge lines, dashed centre lines and zebra crossings (class curve)."""
    colour = (235, 235, 230) if rng.random() < 0.7 else (235, 200, 50)
    min_half = lambda t: max(0.02, 1.8 / road.width_at(t))  # noqa: E731  >= ~4 px wide
    if rng.random() < 0.8:
        for u in (0.05, 0.95):
            cv.paint(cv.poly(road.strip(u, 0.15, 1.0, min_half(0.5))), _jitter(rng, colour, 10),
                     label=CURVE, reflective=True)
    if rng.random() < 0.7:
        t = rng.uniform(0.12, 0.2)
        while t < 1.0:
            t1 = min(1.0, t * 1.45)
            cv.paint(cv.poly(road.strip(0.5, t, t1, min_half(t))), _jitter(rng, colour, 10),
                     label=CURVE, reflective=True)
            t = t * 1.9
    if rng.random() < 0.25:
        t0 = rng.uniform(0.35, 0.75)
        t1 = t0 + max(0.1, 8.0 / (road.height - road.horizon))
        for u in np.arange(0.12, 0.9, 0.13):
            cv.paint(cv.poly(road.strip(u, t0, t1, 0.035)), (235, 235, 230), label=CURVE,
                     reflective=True)


def _draw_bump(cv, rng, road):
    """A speed bump across the road: black band with yellow blocks (class bump)."""
    t0 = rng.uniform(0.3, 0.85)
    t1 = t0 + max(0.06, 6.0 / (road.height - road.horizon))
    cv.paint(cv.poly(road.strip(0.5, t0, t1, 0.5)), _jitter(rng, (40, 40, 35), 10), label=BUMP,
             reflective=True)
    yellow = _jitter(rng, (230, 190, 30), 15)
    for u in np.arange(0.0, 1.0, 0.16):
        cv.paint(cv.poly(road.strip(u + 0.04, t0, t1, 0.04)), yellow, reflective=True)


def _draw_car_stop(cv, rng, road, t, u):
    """A wheel-stop block: a low wide yellow or concrete box with a lit top (class car_stop)."""
    x, y, rw = road.x(u, t), road.y(t), road.width_at(t)
    bw, bh = max(14.0, rw * rng.uniform(0.12, 0.2)), max(6.0, rw * 0.04)
    front = _jitter(rng, (225, 185, 40) if rng.random() < 0.6 else (175, 170, 160), 15)
    cv.paint(cv.rect(x - bw / 2, y - bh, x + bw / 2, y), front, label=CAR_STOP, reflective=True)
    cv.paint(cv.rect(x - bw / 2, y - bh, x + bw / 2, y - 0.6 * bh), np.minimum(front * 1.2, 255),
             reflective=True)
    for sx in np.arange(x - bw / 2 + bw / 8, x + bw / 2, bw / 4):
        cv.paint(cv.rect(sx, y - 0.6 * bh, sx + bw / 10, y), (30, 30, 30), reflective=True)


def _draw_guardrail(cv, rng, road):
    """A guardrail along one road edge: grooved metal beam on posts (class guardrail)."""
    u = -0.03 if rng.random() < 0.5 else 1.03
    t_start = rng.uniform(0.05, 0.4)
    metal = _jitter(rng, (195, 200, 205), 20)
    height = lambda t: max(6.0, road.width_at(t) * 0.08)  # noqa: E731
    ts = np.linspace(t_start, 1.0, 12)
    top = [(road.x(u, t), road.y(t) - height(t)) for t in ts]
    mid = [(road.x(u, t), road.y(t) - 0.45 * height(t)) for t in ts]
    cv.paint(cv.poly(top + mid[::-1]), metal, label=GUARDRAIL, reflective=True)
    groove = [(road.x(u, t), road.y(t) - 0.72 * height(t)) for t in ts]
    groove_low = [(road.x(u, t), road.y(t) - 0.62 * height(t)) for t in ts]
    cv.paint(cv.poly(groove + groove_low[::-1]), metal * 0.55, reflective=True)
    for t in ts[::2]:
        pw = max(1.5, height(t) * 0.12)
        cv.paint(cv.rect(road.x(u, t) - pw, road.y(t) - 0.5 * height(t), road.x(u, t) + pw,
                         road.y(t)), metal * 0.8, label=GUARDRAIL, reflective=True)


def _draw_cone(cv, rng, road, t, u):
    """A traffic cone: orange trapezoid with a white band on a dark base (class color_cone)."""
    x, y = road.x(u, t), road.y(t)
    ch = max(9.0, road.width_at(t) * rng.uniform(0.07, 0.1))
    cw = 0.55 * ch
    orange = _jitter(rng, (245, 105, 25), 15)
    cv.paint(cv.poly([(x - cw / 2, y - 0.12 * ch), (x + cw / 2, y - 0.12 * ch),
                      (x + cw / 8, y - ch), (x - cw / 8, y - ch)]), orange, label=COLOR_CONE,
             reflective=True)
    cv.paint(cv.rect(x - 0.33 * cw, y - 0.62 * ch, x + 0.33 * cw, y - 0.45 * ch), (235, 235, 235),
             reflective=True)
    cv.paint(cv.rect(x - 0.62 * cw, y - 0.14 * ch, x + 0.62 * cw, y), (45, 45, 45),
             label=COLOR_CONE, reflective=True)


def _draw_car(cv, rng, road, t, u, night, ambient):
    """A car seen from behind or from the side (class car): warm wheels and engine."""
    x, y, rw = road.x(u, t), road.y(t), road.width_at(t)
    side = rng.random() < 0.4
    cw = max(20.0, rw * rng.uniform(0.25, 0.35) * (1.5 if side else 1.0))
    ch = cw * (0.45 if side else 0.75)
    paint_colour = _jitter(rng, [(200, 30, 30), (30, 60, 160), (225, 225, 225), (160, 160, 165),
                                 (35, 35, 40), (230, 190, 40), (40, 110, 60)][rng.integers(7)], 20)
    offset = rng.uniform(-2.5, 2.5, 3)
    body_heat = ambient + rng.uniform(25, 35)
    part = dict(label=CAR, night_offset=offset)
    cv.shade[cv.poly([(x - 0.6 * cw, y), (x + 0.6 * cw, y), (x + 0.5 * cw, y + 0.06 * ch + 2),
                      (x - 0.5 * cw, y + 0.06 * ch + 2)])] *= 0.55
    body_top = y - 0.55 * ch
    cv.paint(cv.rect(x - cw / 2, body_top, x + cw / 2, y - 0.12 * ch), paint_colour,
             heat=body_heat, **part)
    inset = cw * (0.22 if side else 0.12)
    cabin = cv.poly([(x - cw / 2 + inset * 0.6, body_top), (x + cw / 2 - inset * 0.6, body_top),
                     (x + cw / 2 - inset, y - ch), (x - cw / 2 + inset, y - ch)])
    cv.paint(cabin, paint_colour, heat=body_heat - 4, **part)
    glass = cv.poly([(x - cw / 2 + inset * 0.9, body_top - 1), (x + cw / 2 - inset * 0.9,
                     body_top - 1), (x + cw / 2 - inset * 1.2, y - 0.93 * ch),
                     (x - cw / 2 + inset * 1.2, y - 0.93 * ch)])
    cv.paint(glass, _jitter(rng, (70, 90, 110), 15), heat=body_heat - 8, **part)
    wheel_heat = ambient + rng.uniform(40, 55)
    if side:
        r = 0.2 * ch
        for wx in (x - 0.3 * cw, x + 0.3 * cw):
            cv.paint(cv.disc(wx, y - r, r), (25, 25, 25), heat=wheel_heat, **part)
        front = x + cw / 2 if rng.random() < 0.5 else x - cw / 2
        engine = cv.rect(min(front, x), body_top, max(front, x), y - 0.12 * ch)
        engine &= np.abs(np.arange(cv.width) - front)[None] < 0.3 * cw
        cv.heat[engine] = ambient + rng.uniform(50, 65)
    else:
        for wx in (x - 0.4 * cw, x + 0.3 * cw):
            cv.paint(cv.rect(wx, y - 0.16 * ch, wx + 0.1 * cw, y), (25, 25, 25),
                     heat=wheel_heat, **part)
        cv.paint(cv.rect(x - 0.3 * cw, y - 0.16 * ch, x - 0.18 * cw, y - 0.08 * ch), (60, 60, 60),
                 heat=ambient + rng.uniform(60, 75), **part)  # exhaust
        lamp = max(2.0, 0.08 * cw)
        lights_on = night and rng.random() < 0.5
        for lx in (x - cw / 2, x + cw / 2 - lamp):
            m = cv.rect(lx, y - 0.45 * ch, lx + lamp, y - 0.45 * ch + lamp)
            cv.paint(m, (220, 40, 30), heat=body_heat + 5, **part)
            if lights_on:
                cv.glow[m] = (90, 10, 5)


def _draw_person(cv, rng, road, t, u, ambient, height=None):
    """A pedestrian: head, torso and two legs (class person), the warmest object."""
    x, y = road.x(u, t), road.y(t)
    ph = height or max(16.0, road.width_at(t) * rng.uniform(0.17, 0.24))
    pw = 0.32 * ph
    offset = rng.uniform(-2.5, 2.5, 3)
    skin = _jitter(rng, [(230, 190, 160), (180, 130, 100), (120, 85, 60)][rng.integers(3)], 10)
    shirt = rng.uniform(20, 235, 3)
    trousers = rng.uniform(20, 150, 3)
    warm = rng.uniform(205, 225)
    part = dict(label=PERSON, night_offset=offset)
    gap = max(1.0, 0.06 * pw)
    cv.paint(cv.rect(x - pw / 2, y - 0.5 * ph, x - gap, y), trousers, heat=warm - 12, **part)
    cv.paint(cv.rect(x + gap, y - 0.5 * ph, x + pw / 2, y), trousers, heat=warm - 12, **part)
    cv.paint(cv.rect(x - pw / 2 - 0.1 * pw, y - 0.82 * ph, x + pw / 2 + 0.1 * pw, y - 0.45 * ph),
             shirt, heat=warm - 6, **part)
    cv.paint(cv.disc(x, y - 0.9 * ph, 0.1 * ph + 0.5), skin, heat=warm + 10, **part)


def _draw_bike(cv, rng, road, t, u, ambient):
    """A bicycle (two wheels and a filled frame, class bike), ridden (person) most of the time."""
    x, y = road.x(u, t), road.y(t)
    bw = max(18.0, road.width_at(t) * rng.uniform(0.16, 0.22))
    r = 0.25 * bw
    offset = rng.uniform(-2.5, 2.5, 3)
    part = dict(label=BIKE, night_offset=offset)
    frame = _jitter(rng, [(200, 30, 30), (30, 60, 200), (30, 150, 60), (220, 220, 220),
                          (240, 200, 40)][rng.integers(5)], 20)
    tyre_heat = ambient + rng.uniform(35, 45)
    for wx in (x - bw / 2 + r, x + bw / 2 - r):
        cv.paint(cv.disc(wx, y - r, r), (30, 30, 30), heat=tyre_heat, **part)
        cv.paint(cv.disc(wx, y - r, 0.45 * r), (150, 150, 150), heat=tyre_heat - 8, **part)
    seat = (x - 0.1 * bw, y - 2.3 * r)
    cv.paint(cv.poly([(x - bw / 2 + r, y - r), seat, (x + 0.25 * bw, y - 2.2 * r),
                      (x + bw / 2 - r, y - r), (x, y - r)]), frame, heat=ambient + 30, **part)
    cv.paint(cv.rect(x + 0.2 * bw, y - 2.6 * r, x + 0.36 * bw, y - 2.2 * r), (40, 40, 40),
             heat=ambient + 30, **part)
    if rng.random() < 0.65:
        _draw_person(cv, rng, road, t - 1.3 * r / (road.height - road.horizon), u, ambient,
                     height=1.05 * bw)


def _draw_objects(cv, rng, road, night, ambient):
    """Place and draw the labelled classes, far ones first so that near ones occlude them."""
    _draw_markings(cv, rng, road)
    if rng.random() < 0.4:
        _draw_bump(cv, rng, road)
    if rng.random() < 0.45:
        _draw_guardrail(cv, rng, road)
    placed = []  # (t, kind, u)
    for _ in range(rng.integers(1, 4) if rng.random() < 0.45 else 0):
        placed.append((rng.uniform(0.3, 1.0), "car_stop", rng.uniform(0.05, 0.95)))
    if rng.random() < 0.45:
        t0, u0 = rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.95)
        for _ in range(rng.integers(1, 5)):
            placed.append((min(1.0, t0 + rng.uniform(0, 0.15)), "cone",
                           u0 + rng.uniform(-0.15, 0.15)))
    for _ in range(rng.integers(0, 5)):
        placed.append((rng.uniform(0.25, 1.0), "car", rng.uniform(0.12, 0.88)))
    for _ in range(rng.integers(0, 5)):
        placed.append((rng.uniform(0.25, 1.0), "person", rng.uniform(-0.25, 1.25)))
    for _ in range(rng.integers(0, 3)):
        placed.append((rng.uniform(0.3, 1.0), "bike", rng.uniform(-0.1, 1.1)))
    placed.sort(key=lambda p: p[0])
    for t, kind, u in placed:
        if kind == "car_stop":
            _draw_car_stop(cv, rng, road, t, u)
        elif kind == "cone":
            _draw_cone(cv, rng, road, t, u)
        elif kind == "car":
            _draw_car(cv, rng, road, t, u, night, ambient)
        elif kind == "person":
            _draw_person(cv, rng, road, t, u, ambient)
        else:
            _draw_bike(cv, rng, road, t, u, ambient)


# ---------------------------------------------------------------------------- cameras
def _day_rgb(cv, rng):
    """Daylight camera: shadows, a lighting gradient across the image and sensor noise."""
    h, w = cv.height, cv.width
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 + rng.uniform(-0.25, 0.25) * (xs / w - 0.5) + rng.uniform(-0.2, 0.2) * (
        ys / h - 0.5
    )
    light *= rng.uniform(0.85, 1.1)
    rgb = cv.albedo * (cv.shade * light)[..., None]
    return rgb + rng.normal(0.0, 4.0, rgb.shape)


def _night_rgb(cv, rng, road):
    """Night camera: dark, noisy; warm objects copy the background, painted classes reflect."""
    h = cv.height
    ys = np.arange(h, dtype=np.float32)[:, None]
    headlight = 0.12 * np.clip((ys - road.horizon) / (h - road.horizon), 0, 1) ** 2
    illum = rng.uniform(0.1, 0.16) + headlight
    albedo = np.where(cv.hidden[..., None], cv.background, cv.albedo)
    albedo[cv.reflective] *= 1.5
    rgb = albedo * illum[..., None] + cv.glow + cv.night_offset
    rgb += rng.normal(0.0, 7.0, rgb.shape) + rng.normal(0.0, 3.0, rgb.shape[:2])[..., None]
    return rgb


def _thermal(cv, rng):
    """Thermal camera: smooth temperature variations, optics blur and sensor noise."""
    heat = cv.heat + _smooth_field(rng, cv.height, cv.width, (4, 5), 8)
    heat = cv2.GaussianBlur(heat, (0, 0), 0.8)
    return heat + rng.normal(0.0, 3.0, heat.shape)


def render_sample(rng, width=160, height=120, night=False):
    """Draw one synthetic RGB-thermal street scene.

    Args:
        rng (np.random.Generator): source of all randomness.
        width (int): image width in pixels.
        height (int): image height in pixels.
        night (bool): night (dark RGB) instead of day.

    Returns:
        tuple:
            * rgbt (np.ndarray): uint8 ``HxWx4`` (R, G, B, thermal).
            * label (np.ndarray): uint8 ``HxW`` MFNet class ids 0..8.
    """
    cv = _Canvas(height, width)
    road = _Road(rng, height, width)
    ambient = _draw_background(cv, rng, road, night)
    _draw_objects(cv, rng, road, night, ambient)
    rgb = _night_rgb(cv, rng, road) if night else _day_rgb(cv, rng)
    rgbt = np.concatenate([rgb, _thermal(cv, rng)[..., None]], axis=2)
    return np.clip(np.round(rgbt), 0, 255).astype(np.uint8), cv.label


# ---------------------------------------------------------------------------- dataset files
def _split_names(spec):
    """Image names per split: global indices from 1, alternating day (D) and night (N).

    Returns:
        dict: split name -> list of (index, name).
    """
    names, index = {}, 1
    for split, count in (("train", spec.num_train), ("val", spec.num_val),
                         ("test", spec.num_test)):
        names[split] = []
        for i in range(count):
            names[split].append((index, f"{index:05d}{'N' if i % 2 else 'D'}"))
            index += 1
    names["test_day"] = [n for n in names["test"] if n[1].endswith("D")]
    names["test_night"] = [n for n in names["test"] if n[1].endswith("N")]
    return names


def _write_dataset(out_dir, spec):
    """Write all images, labels, split lists and, last, the meta file into ``out_dir``."""
    os.makedirs(os.path.join(out_dir, "images"))
    os.makedirs(os.path.join(out_dir, "labels"))
    names = _split_names(spec)
    for split in ("train", "val", "test"):
        for index, name in names[split]:
            rng = np.random.default_rng([spec.seed, index])
            rgbt, label = render_sample(rng, spec.width, spec.height, night=name.endswith("N"))
            # OpenCV writes B,G,R,A order: swap so the file holds R,G,B,thermal
            cv2.imwrite(os.path.join(out_dir, "images", name + ".png"), rgbt[..., [2, 1, 0, 3]])
            cv2.imwrite(os.path.join(out_dir, "labels", name + ".png"), label)
    for split in SPLITS:
        with open(os.path.join(out_dir, split + ".txt"), "w") as f:
            f.writelines(name + "\n" for _, name in names[split])
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(dataclasses.asdict(spec), f, indent=2)


def is_complete(root):
    """Whether ``root`` holds a completely written synthetic dataset (its meta file exists)."""
    return os.path.isfile(os.path.join(root, META_FILE))


def generate_dataset(out_dir, spec=SynthSpec()):
    """Generate a synthetic dataset into ``out_dir`` atomically.

    The files are written into a temporary sibling directory which is then renamed to
    ``out_dir``; if another process finished first, its dataset is kept and ours discarded.

    Args:
        out_dir (str): destination; must not exist or be an empty directory.
        spec (SynthSpec): generation parameters.

    Returns:
        bool: True if this call created ``out_dir``, False if another process did.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_complete(out_dir):
        raise FileExistsError(
            f"{out_dir}: exists and is not empty but holds no complete synthetic dataset "
            f"(no {META_FILE}); remove it or choose another directory"
        )
    if is_complete(out_dir):
        raise FileExistsError(f"{out_dir}: a synthetic dataset already exists there")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        start = time.perf_counter()
        _write_dataset(tmp, spec)
        try:
            os.rename(tmp, out_dir)  # atomic; fails if another process created a non-empty dir
        except OSError:
            if not is_complete(out_dir):
                raise
            logger.info(f"{out_dir} was generated by another process meanwhile; using it")
            return False
        logger.info(f"Generated synthetic RGB-T dataset in {out_dir} "
                    f"({time.perf_counter() - start:.1f} s)")
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_synth_dataset(root, spec=SynthSpec()):
    """Generate the synthetic dataset at ``root`` unless a complete one is already there.

    Safe when several processes call it at once (see :func:`generate_dataset`).

    Args:
        root (str): dataset directory (e.g. ``$DETECTRON2_DATASETS/synth_rgbt``).
        spec (SynthSpec): parameters used if it has to be generated.

    Returns:
        str: ``root``.
    """
    if not is_complete(root):
        logger.info(f"Synthetic RGB-T dataset not found at {root}; generating it with {spec}")
        generate_dataset(root, spec)
    return root


def main(argv=None):
    """Command line entry point (see the module docstring)."""
    default = SynthSpec()
    parser = argparse.ArgumentParser(description="Generate the synthetic RGB-T street dataset "
                                     "in the MFNet layout.")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--num-train", type=int, default=default.num_train)
    parser.add_argument("--num-val", type=int, default=default.num_val)
    parser.add_argument("--num-test", type=int, default=default.num_test)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                        default=(default.width, default.height))
    args = parser.parse_args(argv)
    try:
        spec = SynthSpec(seed=args.seed, width=args.size[0], height=args.size[1],
                         num_train=args.num_train, num_val=args.num_val, num_test=args.num_test)
        generate_dataset(args.out, spec)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
