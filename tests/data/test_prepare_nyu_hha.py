"""HHA of a synthetic flat floor seen by the NYU camera.

Tolerances: height channel exactly constant (the whole image is floor, so 0 cm); angle
channel uniform within 1 degree for metre-valued depth, and within 3 degrees for 99% of the
pixels after 16-bit millimetre quantisation (far floor points at grazing angles).
"""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "prepare_nyu_hha", REPO / "datasets" / "prepare_nyu_hha.py"
)
hha_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hha_tool)

TILT = np.deg2rad(40.0)  # camera pitched down
CAMERA_HEIGHT = 1.2
UP = np.array([0.0, -np.cos(TILT), -np.sin(TILT)])  # world up in the camera frame


def _floor_depth(height=480, width=640, intrinsics=hha_tool.NYU_INTRINSICS):
    fx, fy, cx, cy = intrinsics
    v, u = np.indices((height, width), dtype=np.float64)
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
    along_up = rays @ UP
    assert (along_up < 0).all(), "every pixel must see the floor"
    return -CAMERA_HEIGHT / along_up  # z of the ray's floor intersection


def test_flat_floor_hha():
    depth = _floor_depth()
    hha, up = hha_tool.depth_to_hha(depth)
    assert hha.shape == (480, 640, 3) and hha.dtype == np.uint8
    assert np.degrees(np.arccos(np.clip(up @ UP, -1, 1))) < 0.1
    assert hha[..., 1].min() == hha[..., 1].max() == 0
    assert np.abs(hha[..., 2].astype(int) - 38).max() <= 1
    expected_disparity = np.clip(np.rint(31000.0 / (100.0 * depth)), 0, 255)
    np.testing.assert_array_equal(hha[..., 0], expected_disparity)


def test_cli_on_millimetre_png(tmp_path):
    depth_mm = np.rint(_floor_depth() * 1000).astype(np.uint16)
    (tmp_path / "depth").mkdir()
    Image.fromarray(depth_mm).save(tmp_path / "depth" / "0001.png")
    assert (
        hha_tool.main(["--depth-dir", str(tmp_path / "depth"), "--out-dir", str(tmp_path / "hha")])
        == 0
    )
    hha = np.array(Image.open(tmp_path / "hha" / "0001.png"))
    assert hha.shape == (480, 640, 3)
    assert hha[..., 1].max() <= 1
    assert np.mean(np.abs(hha[..., 2].astype(int) - 38) <= 3) > 0.99
