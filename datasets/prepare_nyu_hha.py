#!/usr/bin/env python
"""Encode depth maps as HHA (Gupta et al., ECCV 2014) for RGB-HHA training on NYU-Depth V2.

HHA has three 8-bit channels, written in this order (R, G, B of the PNG):

1. horizontal disparity: ``31000 / depth_cm`` (so 3.1 m -> 100), clipped to 0..255;
2. height above the lowest point of the scene along the estimated gravity direction, in cm
   (the floor is normally the lowest surface), clipped to 0..255;
3. angle between the surface normal and the estimated "up" direction, in degrees + 38
   (floor -> 38, walls -> 128, ceiling -> 218).

Gravity is estimated as in the paper: starting from the camera's up axis, normals nearly
parallel (within 45 deg, then 15 deg) or nearly perpendicular to the current estimate are
collected and the direction most parallel to the first and most perpendicular to the
second is taken (smallest eigenvector). Pixels without depth get 0 in all channels.

Usage::

    python datasets/prepare_nyu_hha.py --depth-dir datasets/NYUDepthv2/Depth \
        --out-dir datasets/NYUDepthv2/HHA [--depth-scale 1000] [--fx .. --fy .. --cx .. --cy ..]

Depth files: 16-bit PNG (``--depth-scale`` units per metre, default millimetres) or ``.npy``
float arrays in metres.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

# colour camera of the NYU-Depth V2 toolbox (fx, fy, cx, cy) in pixels
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)
_UP_IN_CAMERA = np.array([0.0, -1.0, 0.0])  # camera y points down


def backproject(depth, intrinsics):
    """Camera-frame 3D points of a depth map.

    Args:
        depth (np.ndarray): ``HxW`` depth in metres (0 = missing).
        intrinsics (tuple): ``(fx, fy, cx, cy)`` in pixels.

    Returns:
        np.ndarray: ``HxWx3`` points (x right, y down, z forward), metres.
    """
    fx, fy, cx, cy = intrinsics
    v, u = np.indices(depth.shape, dtype=np.float64)
    return np.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], axis=-1)


def surface_normals(points, valid, window=5):
    """Unit normals from the cross product of smoothed image-space tangents.

    Args:
        points (np.ndarray): ``HxWx3`` camera-frame points.
        valid (np.ndarray): ``HxW`` bool, pixels with depth.
        window (int): box size over which the tangents are averaged.

    Returns:
        tuple: ``(normals HxWx3 facing the camera, valid HxW)``; invalid normals are 0.
    """
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    ok = valid & np.roll(valid, 1, 0) & np.roll(valid, -1, 0)
    ok &= np.roll(valid, 1, 1) & np.roll(valid, -1, 1)
    du = uniform_filter(du * ok[..., None], size=(window, window, 1))
    dv = uniform_filter(dv * ok[..., None], size=(window, window, 1))
    normals = np.cross(du, dv)
    norm = np.linalg.norm(normals, axis=-1)
    ok &= norm > 1e-12
    normals = np.divide(normals, norm[..., None], out=np.zeros_like(normals), where=ok[..., None])
    facing_away = np.sum(normals * points, axis=-1) > 0
    normals[facing_away] *= -1
    return normals, ok


def estimate_up(normals, valid, thresholds_deg=(45.0, 15.0)):
    """Estimate the up direction (opposite to gravity) in the camera frame.

    Args:
        normals (np.ndarray): ``HxWx3`` unit normals.
        valid (np.ndarray): ``HxW`` bool.
        thresholds_deg (tuple[float]): successive angular tolerances.

    Returns:
        np.ndarray: unit 3-vector.
    """
    n = normals[valid]
    up = _UP_IN_CAMERA
    for threshold in np.deg2rad(thresholds_deg):
        cos = n @ up
        parallel = n[np.abs(cos) > np.cos(threshold)]
        perpendicular = n[np.abs(cos) < np.sin(threshold)]
        if len(parallel) + len(perpendicular) == 0:
            break
        scatter = perpendicular.T @ perpendicular - parallel.T @ parallel
        new_up = np.linalg.eigh(scatter)[1][:, 0]
        up = new_up if new_up @ up >= 0 else -new_up
    return up


def depth_to_hha(depth, intrinsics=NYU_INTRINSICS):
    """HHA encoding of a depth map.

    Args:
        depth (np.ndarray): ``HxW`` depth in metres, 0 or NaN where missing.
        intrinsics (tuple): ``(fx, fy, cx, cy)``; NYU's colour camera by default.

    Returns:
        tuple: ``(hha uint8 HxWx3, up 3-vector)``: disparity, height (cm), angle + 38.
    """
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0)
    valid = depth > 0
    if not valid.any():
        raise ValueError("depth map has no valid pixel")
    points = backproject(depth, intrinsics)
    normals, normal_ok = surface_normals(points, valid)
    up = estimate_up(normals, normal_ok)
    height = points @ up
    height_cm = 100.0 * (height - height[valid].min())
    angle = np.degrees(np.arccos(np.clip(normals @ up, -1.0, 1.0)))
    disparity = np.divide(31000.0, 100.0 * depth, out=np.zeros_like(depth), where=valid)
    hha = np.stack([disparity, height_cm, angle + 128.0 - 90.0], axis=-1)
    hha[~valid] = 0
    hha[valid & ~normal_ok, 2] = 0
    return np.clip(np.rint(hha), 0, 255).astype(np.uint8), up


def read_depth(path, depth_scale):
    """Depth in metres from a 16-bit PNG (``depth_scale`` units per metre) or a ``.npy``."""
    if path.endswith(".npy"):
        return np.load(path).astype(np.float64)
    with Image.open(path) as img:
        raw = np.array(img)
    if raw.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth image, got shape {raw.shape}")
    return raw.astype(np.float64) / depth_scale


def main(argv=None):
    parser = argparse.ArgumentParser(description="Depth maps -> HHA PNGs")
    parser.add_argument("--depth-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="PNG units per metre")
    for name, value in zip(("fx", "fy", "cx", "cy"), NYU_INTRINSICS):
        parser.add_argument(f"--{name}", type=float, default=value)
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    files = sorted(f for f in os.listdir(args.depth_dir) if f.endswith((".png", ".npy")))
    if not files:
        print(f"{args.depth_dir}: no .png or .npy depth files", file=sys.stderr)
        return 1
    intrinsics = (args.fx, args.fy, args.cx, args.cy)
    for file in files:
        path = os.path.join(args.depth_dir, file)
        hha, _ = depth_to_hha(read_depth(path, args.depth_scale), intrinsics)
        out = os.path.join(args.out_dir, os.path.splitext(file)[0] + ".png")
        Image.fromarray(hha).save(out)
    print(f"wrote {len(files)} HHA images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
