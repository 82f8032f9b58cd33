"""The labelled classes of the synthetic scenes, drawn onto a :class:`Canvas`.

Warm classes (car, person, bike) carry a heat signature and a ``night_offset`` (they copy the
background in night RGB); painted classes (curve, car_stop, guardrail, color_cone, bump) are
reflective and keep the temperature of what is behind them.

Every drawing function starts a new object on the canvas (:meth:`Canvas.begin_object`), so
the canvas also knows which object each labelled pixel belongs to (a bike's rider is an object
of its own). :data:`THING_CLASSES` are the classes whose objects are panoptic instances.
"""

import numpy as np

from .canvas import jitter

__all__ = ["THING_CLASSES", "draw_objects"]

# MFNet class ids
UNLABELED, CAR, PERSON, BIKE, CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP = range(9)
# countable objects, each drawn separately (every cone too); the other classes are stuff
THING_CLASSES = (CAR, PERSON, BIKE, COLOR_CONE)


def _draw_markings(cv, rng, road):
    """Lane edge lines, dashed centre lines and zebra crossings (class curve)."""
    cv.begin_object()
    colour = (235, 235, 230) if rng.random() < 0.7 else (235, 200, 50)

    def min_half(t):  # half width in u: at least ~4 px wide
        return max(0.02, 1.8 / road.width_at(t))

    if rng.random() < 0.8:
        for u in (0.05, 0.95):
            cv.paint(
                cv.poly(road.strip(u, 0.15, 1.0, min_half(0.5))),
                jitter(rng, colour, 10),
                label=CURVE,
                reflective=True,
            )
    if rng.random() < 0.7:
        t = rng.uniform(0.12, 0.2)
        while t < 1.0:
            t1 = min(1.0, t * 1.45)
            cv.paint(
                cv.poly(road.strip(0.5, t, t1, min_half(t))),
                jitter(rng, colour, 10),
                label=CURVE,
                reflective=True,
            )
            t = t * 1.9
    if rng.random() < 0.25:
        t0 = rng.uniform(0.35, 0.75)
        t1 = t0 + max(0.1, 8.0 / (road.height - road.horizon))
        for u in np.arange(0.12, 0.9, 0.13):
            cv.paint(
                cv.poly(road.strip(u, t0, t1, 0.035)), (235, 235, 230), label=CURVE, reflective=True
            )


def _draw_bump(cv, rng, road):
    """A speed bump across the road: black band with yellow blocks (class bump)."""
    cv.begin_object()
    t0 = rng.uniform(0.3, 0.85)
    t1 = t0 + max(0.06, 6.0 / (road.height - road.horizon))
    cv.paint(
        cv.poly(road.strip(0.5, t0, t1, 0.5)),
        jitter(rng, (40, 40, 35), 10),
        label=BUMP,
        reflective=True,
    )
    yellow = jitter(rng, (230, 190, 30), 15)
    for u in np.arange(0.0, 1.0, 0.16):
        cv.paint(cv.poly(road.strip(u + 0.04, t0, t1, 0.04)), yellow, reflective=True)


def _draw_car_stop(cv, rng, road, t, u):
    """A wheel-stop block: a low wide yellow or concrete box with a lit top (class car_stop)."""
    cv.begin_object()
    x, y, rw = road.x(u, t), road.y(t), road.width_at(t)
    bw, bh = max(18.0, rw * rng.uniform(0.12, 0.2)), max(8.0, rw * 0.055)
    front = jitter(rng, (225, 185, 40) if rng.random() < 0.6 else (175, 170, 160), 15)
    cv.paint(cv.rect(x - bw / 2, y - bh, x + bw / 2, y), front, label=CAR_STOP, reflective=True)
    cv.paint(
        cv.rect(x - bw / 2, y - bh, x + bw / 2, y - 0.6 * bh),
        np.minimum(front * 1.2, 255),
        reflective=True,
    )
    for sx in np.arange(x - bw / 2 + bw / 8, x + bw / 2, bw / 4):
        cv.paint(cv.rect(sx, y - 0.6 * bh, sx + bw / 10, y), (30, 30, 30), reflective=True)


def _draw_guardrail(cv, rng, road):
    """A guardrail along one road edge: grooved metal beam on posts (class guardrail)."""
    cv.begin_object()
    u = -0.03 if rng.random() < 0.5 else 1.03
    t_start = rng.uniform(0.05, 0.4)
    metal = jitter(rng, (195, 200, 205), 20)

    def height(t):  # rail height in pixels at depth t
        return max(9.0, road.width_at(t) * 0.1)

    ts = np.linspace(t_start, 1.0, 12)
    top = [(road.x(u, t), road.y(t) - height(t)) for t in ts]
    mid = [(road.x(u, t), road.y(t) - 0.45 * height(t)) for t in ts]
    cv.paint(cv.poly(top + mid[::-1]), metal, label=GUARDRAIL, reflective=True)
    groove = [(road.x(u, t), road.y(t) - 0.72 * height(t)) for t in ts]
    groove_low = [(road.x(u, t), road.y(t) - 0.62 * height(t)) for t in ts]
    cv.paint(cv.poly(groove + groove_low[::-1]), metal * 0.55, reflective=True)
    for t in ts[::2]:
        pw = max(1.5, height(t) * 0.12)
        cv.paint(
            cv.rect(road.x(u, t) - pw, road.y(t) - 0.5 * height(t), road.x(u, t) + pw, road.y(t)),
            metal * 0.8,
            label=GUARDRAIL,
            reflective=True,
        )


def _draw_cone(cv, rng, road, t, u):
    """A traffic cone: orange trapezoid with a white band on a dark base (class color_cone)."""
    cv.begin_object()
    x, y = road.x(u, t), road.y(t)
    ch = max(14.0, road.width_at(t) * rng.uniform(0.1, 0.13))
    cw = 0.55 * ch
    orange = jitter(rng, (245, 105, 25), 15)
    cv.paint(
        cv.poly(
            [
                (x - cw / 2, y - 0.12 * ch),
                (x + cw / 2, y - 0.12 * ch),
                (x + cw / 8, y - ch),
                (x - cw / 8, y - ch),
            ]
        ),
        orange,
        label=COLOR_CONE,
        reflective=True,
    )
    cv.paint(
        cv.rect(x - 0.33 * cw, y - 0.62 * ch, x + 0.33 * cw, y - 0.45 * ch),
        (235, 235, 235),
        reflective=True,
    )
    cv.paint(
        cv.rect(x - 0.62 * cw, y - 0.14 * ch, x + 0.62 * cw, y),
        (45, 45, 45),
        label=COLOR_CONE,
        reflective=True,
    )


def _draw_car(cv, rng, road, t, u, night, ambient):
    """A car seen from behind or from the side (class car): warm wheels and engine."""
    cv.begin_object()
    x, y, rw = road.x(u, t), road.y(t), road.width_at(t)
    side = rng.random() < 0.4
    cw = max(24.0, rw * rng.uniform(0.25, 0.35) * (1.5 if side else 1.0))
    ch = cw * (0.45 if side else 0.75)
    paint_colour = jitter(
        rng,
        [
            (200, 30, 30),
            (30, 60, 160),
            (225, 225, 225),
            (160, 160, 165),
            (35, 35, 40),
            (230, 190, 40),
            (40, 110, 60),
        ][rng.integers(7)],
        20,
    )
    offset = rng.uniform(-2.5, 2.5, 3)
    body_heat = ambient + rng.uniform(25, 35)
    part = dict(label=CAR, night_offset=offset)
    cv.shade[
        cv.poly(
            [
                (x - 0.6 * cw, y),
                (x + 0.6 * cw, y),
                (x + 0.5 * cw, y + 0.06 * ch + 2),
                (x - 0.5 * cw, y + 0.06 * ch + 2),
            ]
        )
    ] *= 0.55
    body_top = y - 0.55 * ch
    cv.paint(
        cv.rect(x - cw / 2, body_top, x + cw / 2, y - 0.12 * ch),
        paint_colour,
        heat=body_heat,
        **part,
    )
    inset = cw * (0.22 if side else 0.12)
    cabin = cv.poly(
        [
            (x - cw / 2 + inset * 0.6, body_top),
            (x + cw / 2 - inset * 0.6, body_top),
            (x + cw / 2 - inset, y - ch),
            (x - cw / 2 + inset, y - ch),
        ]
    )
    cv.paint(cabin, paint_colour, heat=body_heat - 4, **part)
    glass = cv.poly(
        [
            (x - cw / 2 + inset * 0.9, body_top - 1),
            (x + cw / 2 - inset * 0.9, body_top - 1),
            (x + cw / 2 - inset * 1.2, y - 0.93 * ch),
            (x - cw / 2 + inset * 1.2, y - 0.93 * ch),
        ]
    )
    cv.paint(glass, jitter(rng, (70, 90, 110), 15), heat=body_heat - 8, **part)
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
            cv.paint(
                cv.rect(wx, y - 0.16 * ch, wx + 0.1 * cw, y), (25, 25, 25), heat=wheel_heat, **part
            )
        cv.paint(
            cv.rect(x - 0.3 * cw, y - 0.16 * ch, x - 0.18 * cw, y - 0.08 * ch),
            (60, 60, 60),
            heat=ambient + rng.uniform(60, 75),
            **part,
        )  # exhaust
        lamp = max(2.0, 0.08 * cw)
        lights_on = night and rng.random() < 0.5
        for lx in (x - cw / 2, x + cw / 2 - lamp):
            m = cv.rect(lx, y - 0.45 * ch, lx + lamp, y - 0.45 * ch + lamp)
            cv.paint(m, (220, 40, 30), heat=body_heat + 5, **part)
            if lights_on:
                cv.glow[m] = (90, 10, 5)


def _draw_person(cv, rng, road, t, u, ambient, height=None):
    """A pedestrian: head, torso and two legs (class person), the warmest object."""
    cv.begin_object()
    x, y = road.x(u, t), road.y(t)
    ph = height or max(18.0, road.width_at(t) * rng.uniform(0.17, 0.24))
    pw = 0.32 * ph
    offset = rng.uniform(-2.5, 2.5, 3)
    skin = jitter(rng, [(230, 190, 160), (180, 130, 100), (120, 85, 60)][rng.integers(3)], 10)
    shirt = rng.uniform(20, 235, 3)
    trousers = rng.uniform(20, 150, 3)
    warm = rng.uniform(205, 225)
    part = dict(label=PERSON, night_offset=offset)
    gap = max(1.0, 0.06 * pw)
    cv.paint(cv.rect(x - pw / 2, y - 0.5 * ph, x - gap, y), trousers, heat=warm - 12, **part)
    cv.paint(cv.rect(x + gap, y - 0.5 * ph, x + pw / 2, y), trousers, heat=warm - 12, **part)
    cv.paint(
        cv.rect(x - pw / 2 - 0.1 * pw, y - 0.82 * ph, x + pw / 2 + 0.1 * pw, y - 0.45 * ph),
        shirt,
        heat=warm - 6,
        **part,
    )
    cv.paint(cv.disc(x, y - 0.9 * ph, 0.1 * ph + 0.5), skin, heat=warm + 10, **part)


def _draw_bike(cv, rng, road, t, u, ambient):
    """A bicycle (two wheels and a filled frame, class bike), ridden (person) most of the time."""
    cv.begin_object()
    x, y = road.x(u, t), road.y(t)
    bw = max(22.0, road.width_at(t) * rng.uniform(0.18, 0.24))
    r = 0.25 * bw
    offset = rng.uniform(-2.5, 2.5, 3)
    part = dict(label=BIKE, night_offset=offset)
    frame = jitter(
        rng,
        [(200, 30, 30), (30, 60, 200), (30, 150, 60), (220, 220, 220), (240, 200, 40)][
            rng.integers(5)
        ],
        20,
    )
    tyre_heat = ambient + rng.uniform(35, 45)
    for wx in (x - bw / 2 + r, x + bw / 2 - r):
        cv.paint(cv.disc(wx, y - r, r), (30, 30, 30), heat=tyre_heat, **part)
        cv.paint(cv.disc(wx, y - r, 0.45 * r), (150, 150, 150), heat=tyre_heat - 8, **part)
    seat = (x - 0.1 * bw, y - 2.3 * r)
    cv.paint(
        cv.poly(
            [
                (x - bw / 2 + r, y - r),
                seat,
                (x + 0.25 * bw, y - 2.2 * r),
                (x + bw / 2 - r, y - r),
                (x, y - r),
            ]
        ),
        frame,
        heat=ambient + 30,
        **part,
    )
    cv.paint(
        cv.rect(x + 0.2 * bw, y - 2.6 * r, x + 0.36 * bw, y - 2.2 * r),
        (40, 40, 40),
        heat=ambient + 30,
        **part,
    )
    if rng.random() < 0.65:
        _draw_person(
            cv, rng, road, t - 1.3 * r / (road.height - road.horizon), u, ambient, height=1.05 * bw
        )


def draw_objects(cv, rng, road, night, ambient):
    """Place and draw the labelled classes, far ones first so that near ones occlude them."""
    _draw_markings(cv, rng, road)
    if rng.random() < 0.4:
        _draw_bump(cv, rng, road)
    if rng.random() < 0.55:
        _draw_guardrail(cv, rng, road)
    placed = []  # (t, kind, u)
    for _ in range(rng.integers(1, 4) if rng.random() < 0.5 else 0):
        placed.append((rng.uniform(0.3, 1.0), "car_stop", rng.uniform(0.05, 0.95)))
    if rng.random() < 0.5:
        t0, u0 = rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.95)
        for _ in range(rng.integers(1, 5)):
            placed.append(
                (min(1.0, t0 + rng.uniform(0, 0.15)), "cone", u0 + rng.uniform(-0.15, 0.15))
            )
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
