"""Bad inputs give one clear error naming the file."""

import numpy as np
import pytest
from PIL import Image

from hapnet_d2.data import RGBTDataError, read_label, read_rgbt, read_sample


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RGBTDataError, match="nope.png: file does not exist"):
        read_rgbt({"file_name": str(tmp_path / "nope.png"), "rgbt_layout": "mfnet4"})


def test_truncated_image(tmp_path):
    path = _png(
        tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    )
    data = open(path, "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(RGBTDataError, match="cut.png: unreadable or truncated"):
        read_label(str(tmp_path / "cut.png"))


def test_mfnet_needs_four_channels(tmp_path):
    path = _png(tmp_path / "rgb.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(RGBTDataError, match="rgb.png: expected an 8-bit 4-channel"):
        read_rgbt({"file_name": path, "rgbt_layout": "mfnet4"})


def test_size_mismatch_names_both_files(tmp_path):
    rgb = _png(tmp_path / "rgb.png", np.zeros((4, 5, 3), np.uint8))
    thermal = _png(tmp_path / "t.png", np.zeros((4, 6), np.uint8))
    label = _png(tmp_path / "l.png", np.zeros((3, 5), np.uint8))
    with pytest.raises(
        RGBTDataError, match=r"t.png: size 6x4 .* differs from the RGB image .*rgb.png"
    ):
        read_rgbt({"file_name": rgb, "thermal_file_name": thermal})
    thermal = _png(tmp_path / "t.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(RGBTDataError, match=r"l.png: size 5x3"):
        read_sample({"file_name": rgb, "thermal_file_name": thermal, "sem_seg_file_name": label})


def test_colour_label_and_grey_rgb_rejected(tmp_path):
    grey = _png(tmp_path / "grey.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(RGBTDataError, match="grey.png: expected an 8-bit 3-channel RGB"):
        read_rgbt({"file_name": grey, "thermal_file_name": grey})
    colour = _png(tmp_path / "colour.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(RGBTDataError, match="colour.png: expected a single-channel label"):
        read_label(colour)
    with pytest.raises(RGBTDataError, match="grey.png: expected a 3-channel X"):
        read_rgbt({"file_name": colour, "thermal_file_name": grey, "thermal_channels": 3})


def test_palette_label_gives_indices(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    img = Image.fromarray(ids, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(str(tmp_path / "p.png")), ids)
