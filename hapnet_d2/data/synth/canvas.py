"""Drawing surface and road geometry of the synthetic scenes."""

import cv2
import numpy as np

__all__ = ["Canvas", "Road", "jitter", "smooth_field"]


class Canvas:
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
        instance (np.ndarray): int32 ``HxW``; the object (see :meth:`begin_object`) whose
            :meth:`paint` last set the pixel's label (0 = none). It changes exactly where
            ``label`` changes, so each pixel's label belongs to one object, occlusion included.
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
        self.instance = np.zeros((height, width), np.int32)
        self._object = 0

    def begin_object(self):
        """Start a new object: later labelled :meth:`paint` calls belong to it.

        Returns:
            int: the object's id (1, 2, ... in drawing order).
        """
        self._object += 1
        return self._object

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
            self.instance[mask] = self._object
        self.hidden[mask] = night_offset is not None
        if night_offset is not None:
            self.night_offset[mask] = night_offset
        self.reflective[mask] = reflective


def jitter(rng, colour, amount):
    """``colour`` (3 floats) with a uniform per-channel jitter of +-``amount``."""
    return np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def smooth_field(rng, height, width, cells, amplitude):
    """Smooth random field: a coarse uniform grid upsampled bicubically.

    Returns:
        np.ndarray: float32 ``HxW`` with values in about ``[-amplitude, amplitude]``.
    """
    grid = rng.uniform(-amplitude, amplitude, (cells[0], cells[1])).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


class Road:
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
