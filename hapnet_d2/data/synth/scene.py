"""One synthetic RGB-thermal street scene: background, objects and the two cameras."""

import cv2
import numpy as np

from .canvas import Canvas, Road, jitter, smooth_field
from .objects import draw_objects

__all__ = ["render_sample", "render_scene"]


def _draw_background(cv, rng, road, night):
    """Sky, buildings with windows, sidewalks, road texture, trees, poles and signs (label 0).

    Also sets the background temperature (day warmer than night, sky coldest).
    """
    h, w = cv.height, cv.width
    hz = int(round(road.horizon))
    ambient = rng.uniform(70, 95) if night else rng.uniform(115, 145)
    rows = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None, None]
    sky_top, sky_low = jitter(rng, (110, 150, 205), 25), jitter(rng, (200, 210, 220), 20)
    cv.albedo[:hz] = sky_top * (1 - rows) + sky_low * rows
    cv.heat[:hz] = ambient - rng.uniform(40, 55)

    ground = cv.poly([(0, hz), (w, hz), (w, h), (0, h)])
    cv.paint(ground, jitter(rng, (150, 148, 140), 20), heat=ambient + rng.uniform(-6, 6))
    tiles = smooth_field(rng, h, w, (12, 16), 12)[ground]
    cv.albedo[ground] += tiles[:, None]

    x = rng.uniform(-10, 0)
    while x < w:
        bw = w * rng.uniform(0.1, 0.3)
        top = hz - (hz * rng.uniform(0.2, 0.85))
        facade = jitter(
            rng,
            rng.choice(
                [(170, 90, 70), (200, 190, 160), (140, 140, 150), (110, 120, 100), (215, 200, 120)]
            ),
            25,
        )
        b_heat = ambient + rng.uniform(-10, 6)
        cv.paint(cv.rect(x, top, x + bw, hz + 1), facade, heat=b_heat)
        win = max(2.0, h / 50)
        grid = [
            (wx, wy)
            for wy in np.arange(top + win, hz - win, 2.2 * win)
            for wx in np.arange(x + win, x + bw - win, 2.2 * win)
        ]
        lit = rng.random(len(grid)) < (0.3 if night else 0.0)
        for on in (False, True):
            boxes = [g for g, is_lit in zip(grid, lit) if is_lit == on]
            windows = cv.mask(
                lambda m: [
                    cv2.rectangle(
                        m, (round(wx), round(wy)), (round(wx + win), round(wy + win)), 1, -1
                    )
                    for wx, wy in boxes
                ]
            )
            cv.paint(windows, jitter(rng, (60, 70, 90), 20), heat=b_heat + (18 if on else 4))
            if on:
                cv.glow[windows] = jitter(rng, (40, 35, 15), 8)
        x += bw + rng.uniform(0, 6)

    asphalt = jitter(rng, (95, 95, 100), 15)
    road_mask = cv.poly(
        [
            (road.top[0], road.horizon),
            (road.top[1], road.horizon),
            (road.bottom[1], h),
            (road.bottom[0], h),
        ]
    )
    road_heat = ambient + rng.uniform(3, 12)
    cv.paint(road_mask, asphalt, heat=road_heat)
    cv.albedo[road_mask] += smooth_field(rng, h, w, (10, 14), 10)[road_mask][:, None]
    for _ in range(rng.integers(1, 5)):  # asphalt patches and manholes
        t, u = rng.uniform(0.2, 1.0), rng.uniform(0.0, 1.0)
        r = road.width_at(t) * rng.uniform(0.03, 0.08)
        cv.paint(
            cv.disc(road.x(u, t), road.y(t), r),
            asphalt * rng.uniform(0.7, 1.2),
            heat=road_heat + rng.uniform(-4, 4),
        )

    for _ in range(rng.integers(0, 4)):  # trees
        tx, ty = rng.uniform(0, w), hz + rng.uniform(-2, 4)
        r = h * rng.uniform(0.06, 0.14)
        cv.paint(cv.rect(tx - r / 6, ty - r, tx + r / 6, ty), (90, 60, 40), heat=ambient - 5)
        cv.paint(cv.disc(tx, ty - 1.6 * r, r), jitter(rng, (60, 120, 50), 25), heat=ambient - 12)
    for _ in range(rng.integers(0, 4)):  # poles with signs or lamps
        px, top = rng.uniform(0, w), hz - h * rng.uniform(0.15, 0.35)
        pw = max(1.5, w / 100)
        cv.paint(cv.rect(px - pw, top, px + pw, hz + h * 0.05), (70, 70, 75), heat=ambient - 3)
        if rng.random() < 0.5:
            s = h * rng.uniform(0.04, 0.07)
            sign = rng.choice([(200, 40, 40), (40, 80, 200), (230, 190, 40), (240, 120, 40)])
            cv.paint(
                cv.rect(px - s, top, px + s, top + 1.4 * s),
                jitter(rng, sign, 20),
                heat=ambient - 3,
            )
        else:
            cv.paint(cv.disc(px, top, 2 * pw), (230, 230, 200), heat=ambient + 30)
            cv.glow += (
                np.exp(
                    -((np.arange(w)[None] - px) ** 2 + (np.arange(h)[:, None] - top) ** 2)
                    / (2 * (h * 0.08) ** 2)
                )
                * 45
            )[..., None] * (1, 0.9, 0.6)
    cv.background = cv.albedo.copy()
    return ambient


def _day_rgb(cv, rng):
    """Daylight camera: shadows, a lighting gradient across the image and sensor noise."""
    h, w = cv.height, cv.width
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = (
        1.0 + rng.uniform(-0.25, 0.25) * (xs / w - 0.5) + rng.uniform(-0.2, 0.2) * (ys / h - 0.5)
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
    albedo[cv.reflective] *= 2.0
    rgb = albedo * illum[..., None] + cv.glow + cv.night_offset
    rgb += rng.normal(0.0, 7.0, rgb.shape) + rng.normal(0.0, 3.0, rgb.shape[:2])[..., None]
    return rgb


def _thermal(cv, rng):
    """Thermal camera: smooth temperature variations, optics blur and sensor noise."""
    heat = cv.heat + smooth_field(rng, cv.height, cv.width, (4, 5), 8)
    heat = cv2.GaussianBlur(heat, (0, 0), 0.8)
    return heat + rng.normal(0.0, 3.0, heat.shape)


def render_scene(rng, width=160, height=120, night=False):
    """Draw one synthetic RGB-thermal street scene and say which object each pixel shows.

    Args:
        rng (np.random.Generator): source of all randomness.
        width (int): image width in pixels.
        height (int): image height in pixels.
        night (bool): night (dark RGB) instead of day.

    Returns:
        tuple:
            * rgbt (np.ndarray): uint8 ``HxWx4`` (R, G, B, thermal).
            * label (np.ndarray): uint8 ``HxW`` MFNet class ids 0..8.
            * instance (np.ndarray): int32 ``HxW``, the drawn object whose label the pixel
              shows (1, 2, ... in drawing order; 0 = background). Later objects cover
              earlier ones exactly as in ``label``.
    """
    cv = Canvas(height, width)
    road = Road(rng, height, width)
    ambient = _draw_background(cv, rng, road, night)
    draw_objects(cv, rng, road, night, ambient)
    rgb = _night_rgb(cv, rng, road) if night else _day_rgb(cv, rng)
    rgbt = np.concatenate([rgb, _thermal(cv, rng)[..., None]], axis=2)
    return np.clip(np.round(rgbt), 0, 255).astype(np.uint8), cv.label, cv.instance


def render_sample(rng, width=160, height=120, night=False):
    """Draw one synthetic RGB-thermal street scene (:func:`render_scene` without instances).

    Returns:
        tuple:
            * rgbt (np.ndarray): uint8 ``HxWx4`` (R, G, B, thermal).
            * label (np.ndarray): uint8 ``HxW`` MFNet class ids 0..8.
    """
    rgbt, label, _ = render_scene(rng, width, height, night)
    return rgbt, label
