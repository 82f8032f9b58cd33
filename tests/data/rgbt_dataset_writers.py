"""Write tiny RGB-T datasets in the published layouts (shared by the data and tool tests).

Each writer returns ``{name: (rgb HxWx3 uint8, thermal HxW or HxWx3, label HxW uint8)}``
with the arrays as stored. JPEG-named files (KP, NYU RGB) hold PNG-encoded pixels so that
reading them back is lossless; the readers decode by content, not by extension.
"""

import os

import numpy as np
from PIL import Image

H, W = 6, 8


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _sample(rng, num_classes, thermal_shape=(H, W), thermal_dtype=np.uint8):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    high = 256 if thermal_dtype == np.uint8 else 65536
    thermal = rng.integers(0, high, thermal_shape).astype(thermal_dtype)
    label = rng.integers(0, num_classes, (H, W), dtype=np.uint8)
    label[0, 0] = 255
    return rgb, thermal, label


def _write_list(path, names):
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")


def write_mfnet(root, names=("00001D", "00002N"), split="train", seed=0):
    rng = np.random.default_rng(seed)
    samples = {}
    for name in names:
        rgb, thermal, label = _sample(rng, 9)
        _save(os.path.join(root, "images", f"{name}.png"), np.dstack([rgb, thermal]))
        _save(os.path.join(root, "labels", f"{name}.png"), label)
        samples[name] = (rgb, thermal, label)
    _write_list(os.path.join(root, f"{split}.txt"), names)
    return samples


def write_pst900(root, names=("32_bag1a_left", "7_fire"), split="train", seed=1):
    rng = np.random.default_rng(seed)
    samples = {}
    for name in names:
        rgb, thermal, label = _sample(rng, 5)
        _save(os.path.join(root, split, "rgb", f"{name}.png"), rgb)
        _save(os.path.join(root, split, "thermal", f"{name}.png"), thermal)
        _save(os.path.join(root, split, "labels", f"{name}.png"), label)
        samples[name] = (rgb, thermal, label)
    return samples


def write_kp(root, names=("set00_V000_I00050", "set09_V001_I00117"), split="train", seed=2):
    rng = np.random.default_rng(seed)
    samples = {}
    for name in names:
        set_name, video, frame = name.split("_")
        rgb, lwir, label = _sample(rng, 19, thermal_shape=(H, W, 3))
        frame_dir = os.path.join(root, "images", set_name, video)
        _save(os.path.join(frame_dir, "visible", f"{frame}.jpg"), rgb)
        _save(os.path.join(frame_dir, "lwir", f"{frame}.jpg"), lwir)
        _save(os.path.join(root, "labels", f"{name}.png"), label)
        samples[name] = (rgb, lwir, label)
    _write_list(os.path.join(root, f"{split}.txt"), [f"{n}.png" for n in names])
    return samples


def write_nyu(root, names=("0001", "0002"), split="train", seed=3):
    """Labels are stored NYU-style: 0 = unlabelled, 1..40 classes."""
    rng = np.random.default_rng(seed)
    samples = {}
    for name in names:
        rgb, hha, label = _sample(rng, 41, thermal_shape=(H, W, 3))
        label[0, 0] = 0
        _save(os.path.join(root, "RGB", f"{name}.png"), rgb)
        _save(os.path.join(root, "HHA", f"{name}.png"), hha)
        _save(os.path.join(root, "Label", f"{name}.png"), label)
        samples[name] = (rgb, hha, label)
    _write_list(os.path.join(root, f"{split}.txt"), names)
    return samples


def write_rgbx(root, names=("a", "b"), split="train", seed=4, num_classes=3, x_dtype=np.uint16):
    rng = np.random.default_rng(seed)
    samples = {}
    for name in names:
        rgb, x, label = _sample(rng, num_classes, thermal_dtype=x_dtype)
        _save(os.path.join(root, "rgb", f"{name}.png"), rgb)
        _save(os.path.join(root, "x", f"{name}.png"), x)
        _save(os.path.join(root, "labels", f"{name}.png"), label)
        samples[name] = (rgb, x, label)
    _write_list(os.path.join(root, f"{split}.txt"), [f"{n} day" for n in names])
    return samples
