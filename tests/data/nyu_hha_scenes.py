"""Ray-cast depth maps with analytic normals for the HHA tests (NYU colour camera, 640x480).

The world frame has y up and the floor at y = 0; the camera sits ``camera_height`` above the
floor, looks along world +z and is pitched down by ``tilt_deg``. Camera frame: x right,
y down, z forward. Pixel ``(row, col)`` looks along ``((col + origin - cx) / fx,
(row + origin - cy) / fy, 1)``, where ``origin`` is the index of the first pixel (1 in the
published MATLAB code, whose convention ``datasets/prepare_nyu_hha.py`` follows).
"""

import numpy as np

# NYU-Depth V2 toolbox, colour camera (fx, fy, cx, cy)
NYU_CAMERA = (518.857901, 519.469611, 325.582449, 253.736166)


def camera_rotation(tilt_deg):
    """World-to-camera rotation of a camera pitched down by ``tilt_deg``.

    Returns:
        np.ndarray: ``3x3`` matrix ``R`` with ``p_camera = R @ p_world``.
    """
    t = np.deg2rad(tilt_deg)
    # camera axes expressed in world coordinates (rows): x right, y down, z forward
    x_axis = np.array([1.0, 0.0, 0.0])
    z_axis = np.array([0.0, -np.sin(t), np.cos(t)])
    y_axis = np.array([0.0, -np.cos(t), -np.sin(t)])  # image down: down and forward
    return np.stack([x_axis, y_axis, z_axis])


def camera_rays(shape=(480, 640), intrinsics=NYU_CAMERA, origin=1):
    """Per-pixel ray directions with unit z in the camera frame, ``HxWx3``."""
    fx, fy, cx, cy = intrinsics
    v, u = np.indices(shape, dtype=np.float64) + origin
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones(shape)], axis=-1)


def _hit_planes(rays_world, centre, planes):
    """Nearest hit of rays from ``centre`` with a set of bounded planes.

    Args:
        rays_world (np.ndarray): ``Nx3`` directions (any length; the ray parameter t
            multiplies them, so t is the camera-frame depth when their camera z is 1).
        centre (np.ndarray): ray origin, world frame.
        planes (list[tuple]): ``(normal, offset, inside)``: points p with
            ``normal @ p == offset`` where ``inside(p)`` holds.

    Returns:
        tuple: ``(t N, normal Nx3, plane index N)``; t is inf where nothing is hit.
    """
    n_rays = len(rays_world)
    best_t = np.full(n_rays, np.inf)
    best_n = np.zeros((n_rays, 3))
    best_i = np.full(n_rays, -1)
    for index, (normal, offset, inside) in enumerate(planes):
        denom = rays_world @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (offset - centre @ normal) / denom
        ok = np.isfinite(t) & (t > 1e-9)
        hits = centre + t[:, None] * rays_world
        ok &= inside(hits)
        closer = ok & (t < best_t)
        best_t[closer] = t[closer]
        best_n[closer] = normal
        best_i[closer] = index
    return best_t, best_n, best_i


def room_scene(
    camera_height=1.4,
    tilt_deg=15.0,
    wall_distance=3.5,
    box_centre=(0.3, 2.2),
    box_size=(0.8, 0.6, 0.6),
    box_yaw_deg=30.0,
    side_wall_x=None,
    shape=(480, 640),
    intrinsics=NYU_CAMERA,
    origin=1,
):
    """Floor, a back wall facing the camera and a yawed box standing on the floor.

    Args:
        camera_height (float): metres above the floor.
        tilt_deg (float): downward pitch of the camera.
        wall_distance (float): world z of the back wall (camera at z = 0).
        box_centre (tuple): world ``(x, z)`` of the box's vertical axis.
        box_size (tuple or None): ``(width, height, depth)`` in metres; None: no box.
        box_yaw_deg (float): rotation of the box about the vertical axis.
        side_wall_x (float or None): world x of a side wall facing the camera's left.

    Returns:
        tuple: ``(depth HxW metres, true angle HxW degrees, up 3-vector camera frame,
        surface HxW int)``; the angle is between the surface normal and up (floor 0,
        walls 90); ``surface`` numbers the plane each pixel sees.
    """
    rotation = camera_rotation(tilt_deg)
    rays_cam = camera_rays(shape, intrinsics, origin).reshape(-1, 3)
    rays_world = rays_cam @ rotation  # R^T applied to each ray
    centre = np.array([0.0, camera_height, 0.0])
    yaw = np.deg2rad(box_yaw_deg)
    bx, bz = box_centre
    width, height, depth = box_size if box_size is not None else (1.0, 1.0, 1.0)
    ex = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])  # box axes in the world
    ez = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    ey = np.array([0.0, 1.0, 0.0])
    box_c = np.array([bx, height / 2, bz])
    half = {0: width / 2, 1: height / 2, 2: depth / 2}
    axes = (ex, ey, ez)

    def in_box(p, skip):
        rel = p - box_c
        ok = np.ones(len(p), bool)
        for k, axis in enumerate(axes):
            if k != skip:
                ok &= np.abs(rel @ axis) <= half[k] + 1e-12
        return ok

    planes = [
        (ey, 0.0, lambda p: p[:, 2] < wall_distance),
        (-np.array([0.0, 0.0, 1.0]), -wall_distance, lambda p: p[:, 1] >= 0),
    ]
    if side_wall_x is not None:
        planes.append((np.array([-1.0, 0.0, 0.0]), -side_wall_x, lambda p: p[:, 1] >= 0))
    if box_size is not None:
        for k, axis in enumerate(axes):
            for sign in (1.0, -1.0):
                normal = sign * axis
                planes.append((normal, normal @ box_c + half[k], lambda p, k=k: in_box(p, k)))
    t, normal_world, surface = _hit_planes(rays_world, centre, planes)
    assert np.isfinite(t).all(), "every pixel must hit the scene"
    # orient the normals towards the camera, then measure them against world up
    towards = np.sum(normal_world * rays_world, axis=1) > 0
    normal_world[towards] *= -1
    angle = np.degrees(np.arccos(np.clip(normal_world @ ey, -1.0, 1.0)))
    up_cam = rotation @ ey
    return t.reshape(shape), angle.reshape(shape), up_cam, surface.reshape(shape)


def kinect_noise(depth, seed=0):
    """Depth plus Kinect-like noise: std 1.2 mm + 1.9 mm x (z - 0.4 m)^2, then millimetres."""
    rng = np.random.default_rng(seed)
    sigma = 0.0012 + 0.0019 * (depth - 0.4) ** 2
    noisy = depth + sigma * rng.standard_normal(depth.shape)
    return np.rint(noisy * 1000.0) / 1000.0
