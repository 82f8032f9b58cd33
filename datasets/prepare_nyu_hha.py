#!/usr/bin/env python
"""Encode depth maps as HHA (Gupta et al., ECCV 2014) for RGB-HHA training on NYU-Depth V2.

HHA has three 8-bit channels, written in this order (R, G, B of the PNG):

1. horizontal disparity: ``31000 / max(depth_cm, 100)`` (so 3.1 m -> 100);
2. height above the floor along the estimated gravity direction, in cm. The floor is the
   lowest point of the scene; when no point lies at least 90 cm below the camera, the floor
   is assumed 130 cm below the camera;
3. angle between the surface normal and the estimated up direction, in degrees + 38
   (floor -> 38, walls -> 128, ceiling -> 218).

Each channel is rounded half away from zero and saturated to 0..255, as MATLAB's ``uint8``.

The estimator follows the published implementation (``saveHHA`` / ``processDepthImage``):

* normals: least-squares plane fit in a square window around each pixel, in inverse depth
  (``1/Z = a * X/Z + b * Y/Z + c``), over the pixels with *raw* depth only; 7x7 window for
  the angle channel, 21x21 window for gravity. A pixel gets a normal whenever its window
  holds enough valid points, so valid pixels next to a hole keep their angle and pixels
  inside small holes get one from their neighbours; where the fit is undetermined (big
  holes) the angle is 180 degrees (written 218), as in the published output.
* gravity: starting from the camera's up axis, 5 iterations at 45 degrees then 5 at 15
  degrees: normals within the angle of the current estimate (floor, ceiling, table tops)
  or within the angle of perpendicular to it (walls) are collected and the direction most
  parallel to the first and most perpendicular to the second is taken (smallest
  eigenvector of ``sum(n_perp n_perp^T) - sum(n_par n_par^T)``).
* disparity and height come from the in-painted depth, at every pixel.

Pixel coordinates start at 1, as in the published MATLAB code with the NYU toolbox
intrinsics. Usage::

    python datasets/prepare_nyu_hha.py --depth-dir datasets/NYUDepthv2/Depth \
        --out-dir datasets/NYUDepthv2/HHA [--raw-depth-dir datasets/NYUDepthv2/RawDepth] \
        [--depth-scale 1000] [--fx .. --fy .. --cx .. --cy ..]

Depth files: 16-bit PNG (``--depth-scale`` units per metre, default millimetres) or ``.npy``
float arrays in metres. ``--depth-dir`` holds the in-painted depth; ``--raw-depth-dir``
(same file names) the raw depth whose zeros mark missing measurements. Without raw depth,
the zeros (or NaNs) of the depth itself are the missing pixels.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image
from scipy.ndimage import correlate1d

# colour camera of the NYU-Depth V2 toolbox (fx, fy, cx, cy) in pixels, 1-based pixel indices
NYU_INTRINSICS = (
    5.1885790117450188e02,
    5.1946961112127485e02,
    3.2558244941119034e02,
    2.5373616633400465e02,
)
PIXEL_ORIGIN = 1  # index of the first pixel (MATLAB convention of the published code)
ANGLE_RADIUS = 3  # 7x7 plane fit for the angle channel
GRAVITY_RADIUS = 10  # 21x21 plane fit for the gravity estimate
GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))  # (tolerance in degrees, iterations)
NO_FLOOR_BELOW_CM = 90.0  # lowest point less than this below the camera: no floor in view
ASSUMED_FLOOR_CM = 130.0  # ... then the floor is assumed this far below the camera
_UP_IN_CAMERA = np.array([0.0, -1.0, 0.0])  # camera y points down


def pixel_rays(shape, intrinsics):
    """Normalised image coordinates ``(X/Z, Y/Z)`` of every pixel.

    Args:
        shape (tuple): ``(H, W)``.
        intrinsics (tuple): ``(fx, fy, cx, cy)`` in pixels (first pixel = ``PIXEL_ORIGIN``).

    Returns:
        tuple: two ``HxW`` arrays.
    """
    fx, fy, cx, cy = intrinsics
    v, u = np.indices(shape, dtype=np.float64) + PIXEL_ORIGIN
    return (u - cx) / fx, (v - cy) / fy


def backproject(depth, intrinsics):
    """Camera-frame 3D points of a depth map.

    Args:
        depth (np.ndarray): ``HxW`` depth (0 = missing).
        intrinsics (tuple): ``(fx, fy, cx, cy)`` in pixels.

    Returns:
        np.ndarray: ``HxWx3`` points (x right, y down, z forward), in the unit of ``depth``.
    """
    x_z, y_z = pixel_rays(depth.shape, intrinsics)
    return np.stack([x_z * depth, y_z * depth, depth], axis=-1)


def _window_sum(image, radius, kernel_u=None, kernel_v=None):
    """Zero-padded separable window sum ``sum_{du,dv} k_v(dv) k_u(du) image[v+dv, u+du]``."""
    ones = np.ones(2 * radius + 1)
    rows = correlate1d(image, ones if kernel_u is None else kernel_u, axis=1, mode="constant")
    return correlate1d(rows, ones if kernel_v is None else kernel_v, axis=0, mode="constant")


def plane_fit_normals(depth, missing, intrinsics, radius):
    """Normals of least-squares planes fitted in inverse depth over square windows.

    In each ``(2 radius + 1)^2`` window the valid pixels give ``1/Z = alpha du + beta dv +
    gamma`` (``du, dv`` pixel offsets from the centre, image borders not wrapped), which is
    the plane ``n . P = 1`` with ``n = (alpha fx, beta fy, gamma - alpha u0 - beta v0)``,
    ``(u0, v0)`` the centre pixel minus ``(cx, cy)``: the same least-squares solution as
    fitting ``1/Z = n . (X/Z, Y/Z, 1)`` directly, computed without cancellation.

    Args:
        depth (np.ndarray): ``HxW`` depth, metres.
        missing (np.ndarray): ``HxW`` bool, pixels that take no part in the fits.
        intrinsics (tuple): ``(fx, fy, cx, cy)``.
        radius (int): half window size.

    Returns:
        np.ndarray: ``HxWx3`` unit normals facing the camera (``n . P < 0``), NaN where the
        window's valid pixels do not determine a plane (fewer than 3, or collinear).
    """
    fx, fy, cx, cy = intrinsics
    weight = (~missing).astype(np.float64)
    inv_z = np.divide(1.0, depth, out=np.zeros_like(depth), where=~missing)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    # correlate1d: out[i] = sum_j k[j] in[i + j - radius], so k = offsets weighs by du
    lin, sq = offsets, offsets**2
    s1 = _window_sum(weight, radius)
    su = _window_sum(weight, radius, lin)
    sv = _window_sum(weight, radius, None, lin)
    suu = _window_sum(weight, radius, sq)
    svv = _window_sum(weight, radius, None, sq)
    suv = _window_sum(weight, radius, lin, lin)
    sq_ = _window_sum(inv_z, radius)
    suq = _window_sum(inv_z, radius, lin)
    svq = _window_sum(inv_z, radius, None, lin)
    # adjugate of the symmetric normal matrix [[suu, suv, su], [suv, svv, sv], [su, sv, s1]]
    c00 = svv * s1 - sv * sv
    c01 = sv * su - suv * s1
    c02 = suv * sv - svv * su
    c11 = suu * s1 - su * su
    c12 = suv * su - suu * sv
    c22 = suu * svv - suv * suv
    det = suu * c00 + suv * c01 + su * c02  # integer sums: exactly 0 when degenerate
    undetermined = ~(det > 0.5)
    det[undetermined] = np.nan
    alpha = (c00 * suq + c01 * svq + c02 * sq_) / det
    beta = (c01 * suq + c11 * svq + c12 * sq_) / det
    gamma = (c02 * suq + c12 * svq + c22 * sq_) / det
    v, u = np.indices(depth.shape, dtype=np.float64) + PIXEL_ORIGIN
    normals = np.stack(
        [alpha * fx, beta * fy, gamma - alpha * (u - cx) - beta * (v - cy)], axis=-1
    )
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    # n . P = 1 > 0 points away from the camera; flip to face it
    return -normals


def estimate_up(normals, schedule=GRAVITY_SCHEDULE):
    """Estimate the up direction (opposite to gravity) in the camera frame.

    Args:
        normals (np.ndarray): ``HxWx3`` (or ``Nx3``) unit normals, NaN where undetermined.
        schedule (tuple): ``(tolerance_deg, iterations)`` stages.

    Returns:
        np.ndarray: unit 3-vector.
    """
    n = normals.reshape(-1, 3)
    n = n[np.isfinite(n).all(axis=1)]
    up = _UP_IN_CAMERA.copy()
    for tolerance_deg, iterations in schedule:
        tolerance = np.deg2rad(tolerance_deg)
        for _ in range(iterations):
            cos = np.abs(n @ up)
            parallel = n[cos > np.cos(tolerance)]
            perpendicular = n[cos < np.sin(tolerance)]
            if len(parallel) + len(perpendicular) == 0:
                return up
            scatter = perpendicular.T @ perpendicular - parallel.T @ parallel
            new_up = np.linalg.eigh(scatter)[1][:, 0]
            up = new_up if new_up @ up >= 0 else -new_up
    return up


def _missing_mask(depth, raw_depth):
    """Pixels without a measurement: raw depth 0/NaN (or depth 0/NaN without raw depth)."""
    missing = ~(depth > 0)
    if raw_depth is not None:
        missing |= ~(raw_depth > 0)
    return missing


def hha_channels(depth, intrinsics=NYU_INTRINSICS, raw_depth=None):
    """Unquantised HHA channels of a depth map.

    Args:
        depth (np.ndarray): ``HxW`` (in-painted) depth in metres; 0 or NaN where missing.
        intrinsics (tuple): ``(fx, fy, cx, cy)``; NYU's colour camera by default.
        raw_depth (np.ndarray or None): ``HxW`` raw depth; its zeros/NaNs mark the pixels
            left out of the normal fits.

    Returns:
        tuple: ``(channels HxWx3 float, up 3-vector)``: disparity, height (cm), angle + 38.

    Raises:
        ValueError: non-2-D input, shapes differ, or no valid pixel.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"expected a 2-D depth map, got shape {depth.shape}")
    if raw_depth is not None:
        raw_depth = np.asarray(raw_depth, dtype=np.float64)
        if raw_depth.shape != depth.shape:
            raise ValueError(f"raw depth shape {raw_depth.shape} != depth shape {depth.shape}")
    missing = _missing_mask(depth, raw_depth)
    if missing.all():
        raise ValueError("depth map has no valid pixel")
    depth_cm = 100.0 * np.nan_to_num(depth, nan=0.0)
    points = backproject(depth_cm, intrinsics)
    up = estimate_up(plane_fit_normals(depth, missing, intrinsics, GRAVITY_RADIUS))
    normals = plane_fit_normals(depth, missing, intrinsics, ANGLE_RADIUS)
    with np.errstate(invalid="ignore"):
        angle = np.degrees(np.arccos(np.clip(normals @ up, -1.0, 1.0)))
    angle[np.isnan(angle)] = 180.0
    height = points @ up
    floor = height.min()
    if floor > -NO_FLOOR_BELOW_CM:
        floor = -ASSUMED_FLOOR_CM
    disparity = 31000.0 / np.maximum(depth_cm, 100.0)
    return np.stack([disparity, height - floor, angle + 128.0 - 90.0], axis=-1), up


def to_uint8(values):
    """MATLAB's ``uint8``: round half away from zero, saturate to 0..255, NaN -> 0."""
    values = np.nan_to_num(values, nan=0.0)
    return np.clip(np.floor(np.clip(values, 0.0, 255.0) + 0.5), 0, 255).astype(np.uint8)


def depth_to_hha(depth, intrinsics=NYU_INTRINSICS, raw_depth=None):
    """HHA encoding of a depth map (see :func:`hha_channels`).

    Returns:
        tuple: ``(hha uint8 HxWx3, up 3-vector)``: disparity, height (cm), angle + 38.
    """
    channels, up = hha_channels(depth, intrinsics, raw_depth)
    return to_uint8(channels), up


def read_depth(path, depth_scale):
    """Depth in metres from a 16-bit PNG (``depth_scale`` units per metre) or a ``.npy``.

    Raises:
        ValueError: ``"PATH: reason"`` when the file cannot be read or is not a 2-D map.
    """
    try:
        if path.endswith(".npy"):
            depth = np.load(path)
        else:
            with Image.open(path) as img:
                depth = np.array(img).astype(np.float64) / depth_scale
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read depth ({err})") from None
    if depth.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth map, got shape {depth.shape}")
    return depth.astype(np.float64)


def _find(directory, stem):
    for ext in (".png", ".npy"):
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{os.path.join(directory, stem)}.png/.npy: raw depth file not found")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Depth maps -> HHA PNGs")
    parser.add_argument("--depth-dir", required=True, help="(in-painted) depth maps")
    parser.add_argument("--raw-depth-dir", help="raw depth maps (same names); 0 = missing")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="PNG units per metre")
    for name, value in zip(("fx", "fy", "cx", "cy"), NYU_INTRINSICS):
        parser.add_argument(f"--{name}", type=float, default=value)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.depth_dir):
        print(f"{args.depth_dir}: not a directory", file=sys.stderr)
        return 1
    files = sorted(f for f in os.listdir(args.depth_dir) if f.endswith((".png", ".npy")))
    if not files:
        print(f"{args.depth_dir}: no .png or .npy depth files", file=sys.stderr)
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    intrinsics = (args.fx, args.fy, args.cx, args.cy)
    for file in files:
        path = os.path.join(args.depth_dir, file)
        stem = os.path.splitext(file)[0]
        try:
            depth = read_depth(path, args.depth_scale)
            raw = None
            if args.raw_depth_dir:
                raw = read_depth(_find(args.raw_depth_dir, stem), args.depth_scale)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
        try:
            hha, _ = depth_to_hha(depth, intrinsics, raw)
        except ValueError as err:
            print(f"{path}: {err}", file=sys.stderr)
            return 1
        Image.fromarray(hha).save(os.path.join(args.out_dir, stem + ".png"))
    print(f"wrote {len(files)} HHA images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
