"""HHA encoding (datasets/prepare_nyu_hha.py) on ray-cast scenes seen by the NYU camera.

References are independent of the converter: analytic normals and heights of the ray-cast
planes (tests/data/nyu_hha_scenes.py) and a per-pixel ``np.linalg.lstsq`` plane fit.
Tolerances: single-plane scenes are exact up to float rounding (1e-6 degree); on the noisy
floor + wall + box scene the published algorithm's mean absolute angle error is 6.9-7.2
degrees (the former 5x5 central-difference estimator: 8.6-8.8), hence the 7.2 bound.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import nyu_hha_scenes as scenes  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "prepare_nyu_hha", REPO / "datasets" / "prepare_nyu_hha.py"
)
hha_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hha_tool)

CAMERA = scenes.NYU_CAMERA
FLOOR_HEIGHT = 1.2
FLOOR_TILT = 40.0


def _angle_deg(a, b):
    """Angle between unit vectors, accurate near 0 (atan2 of cross and dot)."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(a * b, axis=-1)))


def _floor_scene():
    depth, _, up, surface = scenes.room_scene(
        camera_height=FLOOR_HEIGHT, tilt_deg=FLOOR_TILT, wall_distance=50.0, box_size=None
    )
    assert (surface == 0).all(), "every pixel must see the floor"
    return depth, up


@pytest.fixture(scope="module")
def room():
    """The acceptance scene: floor + back wall + yawed box, camera 1.2 m high, pitched 20 deg."""
    return scenes.room_scene(camera_height=1.2, tilt_deg=20.0)


def test_intrinsics_are_the_toolbox_ones():
    np.testing.assert_allclose(hha_tool.NYU_INTRINSICS, CAMERA, rtol=0, atol=1e-6)


def test_flat_floor_is_exact():
    depth, true_up = _floor_scene()
    channels, up = hha_tool.hha_channels(depth)
    assert _angle_deg(up, true_up) < 1e-6
    assert np.abs(channels[..., 2] - 38.0).max() < 1e-6  # normal == up everywhere
    assert np.abs(channels[..., 1]).max() < 1e-6  # floor is the lowest point: height 0
    hha, _ = hha_tool.depth_to_hha(depth)
    assert hha.shape == (480, 640, 3) and hha.dtype == np.uint8
    assert (hha[..., 2] == 38).all() and (hha[..., 1] == 0).all()
    expected_disparity = np.floor(31000.0 / np.maximum(100.0 * depth, 100.0) + 0.5)
    np.testing.assert_array_equal(hha[..., 0], np.minimum(expected_disparity, 255))


def test_plane_fit_matches_lstsq_reference():
    """7x7 normals equal an independent least-squares fit of 1/Z = a X/Z + b Y/Z + c."""
    depth, *_ = scenes.room_scene(camera_height=1.2, tilt_deg=20.0)
    depth = scenes.kinect_noise(depth, seed=1)
    missing = np.zeros(depth.shape, bool)
    missing[100:140, 200:260] = True  # a big hole
    missing[300, 300:303] = True  # a small one
    normals = hha_tool.plane_fit_normals(depth, missing, CAMERA, 3)
    fx, fy, cx, cy = CAMERA
    rng = np.random.default_rng(0)
    pixels = [(0, 0), (479, 639), (0, 639), (300, 301), (99, 230), (140, 259)]
    pixels += [tuple(p) for p in rng.integers((0, 0), (480, 640), size=(30, 2))]
    checked = 0
    for r, c in pixels:
        rows, cols = np.mgrid[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4]
        keep = (rows < 480) & (cols < 640)
        rows, cols = rows[keep], cols[keep]
        keep = ~missing[rows, cols]
        rows, cols = rows[keep], cols[keep]
        if len(rows) < 3:
            assert np.isnan(normals[r, c]).all()
            continue
        design = np.stack([(cols + 1 - cx) / fx, (rows + 1 - cy) / fy, np.ones(len(rows))], 1)
        n = np.linalg.lstsq(design, 1.0 / depth[rows, cols], rcond=None)[0]
        expected = -n / np.linalg.norm(n)  # n . P = 1: flip to face the camera
        assert _angle_deg(normals[r, c], expected) < 1e-6, (r, c)
        checked += 1
    assert checked >= 30
    assert np.isnan(normals[120, 230]).all()  # no valid pixel within 3: undetermined


def test_collinear_window_is_undetermined():
    depth = np.full((20, 20), 2.0)
    missing = np.ones((20, 20), bool)
    missing[10, :] = False  # one valid row: every window's points are collinear
    normals = hha_tool.plane_fit_normals(depth, missing, CAMERA, 3)
    assert np.isnan(normals).all()


def test_invalid_left_border_leaves_right_border_unchanged():
    # a side wall on the right: its inverse depth varies along u, unlike the left border's
    depth, _, _, surface = scenes.room_scene(camera_height=1.2, tilt_deg=20.0, side_wall_x=1.5)
    assert (surface[:, -4:] == 2).mean() > 0.5
    cut = depth.copy()
    cut[:, :8] = 0.0
    full_normals = hha_tool.plane_fit_normals(depth, depth <= 0, CAMERA, 3)
    cut_normals = hha_tool.plane_fit_normals(cut, cut <= 0, CAMERA, 3)
    np.testing.assert_allclose(cut_normals[:, -4:], full_normals[:, -4:], rtol=0, atol=1e-12)
    hha_full, _ = hha_tool.depth_to_hha(depth)
    hha_cut, _ = hha_tool.depth_to_hha(cut)
    right = np.abs(hha_cut[:, -4:, 2].astype(int) - hha_full[:, -4:, 2].astype(int))
    assert right.max() <= 1 and (hha_cut[:, -4:, 2] > 0).all()


def test_no_floor_in_view_assumes_floor_130cm_below():
    """Two walls, camera level: the lowest point is 44 cm below, so the floor is put at 130."""
    depth, _, true_up, surface = scenes.room_scene(
        camera_height=1.4, tilt_deg=0.0, wall_distance=1.0, side_wall_x=0.4, box_size=None
    )
    assert set(np.unique(surface)) == {1, 2}, "only the walls are in view"
    below_cm = 100.0 * scenes.camera_rays(depth.shape)[..., 1] * depth  # camera y is down
    assert 0 < below_cm.max() < 90
    channels, up = hha_tool.hha_channels(depth)
    assert _angle_deg(up, true_up) < 1e-6
    np.testing.assert_allclose(channels[..., 1], 130.0 - below_cm, rtol=0, atol=1e-6)
    hha, _ = hha_tool.depth_to_hha(depth)
    assert hha[..., 1].min() == int(np.floor(130.0 - below_cm.max() + 0.5))  # 86, not 0


def test_holes_follow_raw_depth_mask(room):
    """In-painted depth + raw mask: neighbours of a hole keep their angle, holes get one too."""
    depth, angle, _, surface = room
    raw = depth.copy()
    raw[400:404, 300:304] = 0.0  # small hole on the floor
    raw[380:440, 80:140] = 0.0  # big hole on the floor
    assert (surface[370:450, 70:150] == 0).all() and (surface[390:414, 290:314] == 0).all()
    hha_full, _ = hha_tool.depth_to_hha(depth)
    hha, _ = hha_tool.depth_to_hha(depth, raw_depth=raw)
    # disparity and height come from the in-painted depth, everywhere (the height within
    # one level: the hole removes a few normals from the gravity estimate)
    np.testing.assert_array_equal(hha[..., 0], hha_full[..., 0])
    assert np.abs(hha[..., 1].astype(int) - hha_full[..., 1]).max() <= 1
    # floor pixels around and inside the small hole: angle of the floor (0 deg -> 38)
    assert (hha[396:408, 296:308, 2] == 38).all()
    # the big hole's rim is fitted from the valid side (two valid rows in the window);
    # one valid row is collinear and deeper inside there is none: no normal, 180 -> 218
    assert (hha[374:382, 70:150, 2] == 38).all()
    assert (hha[382, 83:137, 2] == 218).all()
    assert (hha[383:437, 83:137, 2] == 218).all()
    # without raw depth, zeros are missing pixels: disparity 31000/100 -> 255, height of
    # the camera above the floor (points at the camera centre), angle from the neighbours
    hha_zeros, _ = hha_tool.depth_to_hha(raw)
    assert (hha_zeros[400:404, 300:304, 0] == 255).all()
    assert (hha_zeros[400:404, 300:304, 1] == 120).all()
    assert (hha_zeros[396:408, 296:308, 2] == 38).all()


def test_room_scene_clean_and_noisy(room):
    depth, angle, true_up, surface = room
    from scipy.ndimage import maximum_filter, minimum_filter

    channels, up = hha_tool.hha_channels(depth)
    # away from edges (7x7 window on one plane) only the gravity error remains
    interior = minimum_filter(surface, 7, mode="nearest") == maximum_filter(
        surface, 7, mode="nearest"
    )
    gravity_error = _angle_deg(up, true_up)
    assert gravity_error < 0.1
    assert np.abs(channels[..., 2] - 38.0 - angle)[interior].max() <= gravity_error + 1e-6
    noisy = scenes.kinect_noise(depth, seed=0)
    hha, _ = hha_tool.depth_to_hha(noisy)
    error = np.abs(hha[..., 2].astype(float) - 38.0 - angle).mean()
    assert error <= 7.2, f"mean absolute angle error {error:.2f} deg"


def test_cli_on_millimetre_png(tmp_path):
    depth, _ = _floor_scene()
    depth_mm = np.rint(depth * 1000).astype(np.uint16)
    raw_mm = depth_mm.copy()
    raw_mm[200:203, 300:303] = 0
    for folder, image in (("depth", depth_mm), ("raw", raw_mm)):
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "0001.png")
    args = ["--depth-dir", str(tmp_path / "depth"), "--out-dir", str(tmp_path / "hha")]
    assert hha_tool.main(args + ["--raw-depth-dir", str(tmp_path / "raw")]) == 0
    hha = np.array(Image.open(tmp_path / "hha" / "0001.png"))
    expected, _ = hha_tool.depth_to_hha(depth_mm / 1000.0, raw_depth=raw_mm / 1000.0)
    np.testing.assert_array_equal(hha, expected)
    assert hha[..., 1].max() <= 1
    assert np.mean(np.abs(hha[..., 2].astype(int) - 38) <= 3) > 0.99


def test_cli_reports_bad_files(tmp_path, capsys):
    (tmp_path / "depth").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "depth" / "a.png")
    args = ["--depth-dir", str(tmp_path / "depth"), "--out-dir", str(tmp_path / "hha")]
    assert hha_tool.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("a.png: expected a single-channel depth map, got shape (4, 4, 3)")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "depth" / "a.png")
    assert hha_tool.main(args) == 1
    assert capsys.readouterr().err.strip().endswith("a.png: depth map has no valid pixel")
    Image.fromarray(np.ones((4, 4), np.uint16)).save(tmp_path / "depth" / "a.png")
    assert hha_tool.main(args + ["--raw-depth-dir", str(tmp_path / "nothing")]) == 1
    assert "raw depth file not found" in capsys.readouterr().err
