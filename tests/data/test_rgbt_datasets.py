"""Loading each published layout returns exactly the pixels and labels written."""

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hapnet_d2.data import read_rgbt, read_sample
from hapnet_d2.data.datasets import (
    load_kp_split,
    load_mfnet_split,
    load_nyuv2_split,
    load_pst900_split,
    load_rgbx_split,
    register_mfnet_dataset,
    register_rgbx_dataset,
)
from conftest import MFNET_SAMPLE, SHARED_DATA, requires_mfnet_sample
from hapnet_d2.data.datasets.register_kp import kp_condition
from rgbt_dataset_writers import H, W, write_kp, write_mfnet, write_nyu, write_pst900, write_rgbx

MFNET_SAMPLE = Path(MFNET_SAMPLE)
KP_SPLITS = Path(SHARED_DATA) / "kp_splits"


def _by_id(dicts):
    return {d["image_id"]: d for d in dicts}


def _check_common(d):
    assert (d["height"], d["width"]) == (H, W)
    rgb, thermal, label = read_sample(d)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    assert thermal.dtype == np.float32
    return rgb, thermal, label


def test_mfnet_loads_rgb_thermal_label_and_condition(tmp_path):
    samples = write_mfnet(str(tmp_path))
    dicts = _by_id(load_mfnet_split(str(tmp_path), "train"))
    assert list(dicts) == list(samples)
    for name, (rgb, thermal, label) in samples.items():
        d = dicts[name]
        assert d["file_name"] == d["thermal_file_name"] == str(tmp_path / "images" / f"{name}.png")
        got_rgb, got_thermal, got_label = _check_common(d)
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_array_equal(got_thermal, thermal.astype(np.float32))
        np.testing.assert_array_equal(got_label, label)
    assert dicts["00001D"]["condition"] == "day" and dicts["00002N"]["condition"] == "night"


@requires_mfnet_sample
def test_real_mfnet_frame_channels():
    png = np.array(Image.open(MFNET_SAMPLE))
    assert png.shape == (480, 640, 4)
    rgb, thermal = read_rgbt({"file_name": str(MFNET_SAMPLE), "rgbt_layout": "mfnet4"})
    np.testing.assert_array_equal(rgb, png[:, :, :3])
    np.testing.assert_array_equal(thermal, png[:, :, 3].astype(np.float32))
    # the thermal channel is not a copy of a colour channel
    assert not np.array_equal(png[:, :, 3], png[:, :, 0])


def test_pst900_loads_every_rgb_file(tmp_path):
    samples = write_pst900(str(tmp_path))
    dicts = _by_id(load_pst900_split(str(tmp_path), "train"))
    assert sorted(dicts) == sorted(samples)
    for name, (rgb, thermal, label) in samples.items():
        got_rgb, got_thermal, got_label = _check_common(dicts[name])
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_array_equal(got_thermal, thermal.astype(np.float32))
        np.testing.assert_array_equal(got_label, label)
        assert dicts[name]["condition"] is None


def test_kp_averages_lwir_and_reads_condition(tmp_path):
    samples = write_kp(str(tmp_path))
    dicts = _by_id(load_kp_split(str(tmp_path), "train"))
    for name, (rgb, lwir, label) in samples.items():
        got_rgb, got_thermal, got_label = _check_common(dicts[name])
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_allclose(got_thermal, lwir.astype(np.float64).mean(axis=2), atol=1e-4)
        np.testing.assert_array_equal(got_label, label)
    assert dicts["set00_V000_I00050"]["condition"] == "day"
    assert dicts["set09_V001_I00117"]["condition"] == "night"


@pytest.mark.skipif(not KP_SPLITS.exists(), reason="shared KP split lists absent")
@pytest.mark.parametrize("split,expected", [("train", 499), ("val", 140), ("test", 311)])
def test_kp_real_split_lists_conditions(split, expected):
    names = (KP_SPLITS / f"{split}.txt").read_text().split()
    day = set((KP_SPLITS / f"{split}_day.txt").read_text().split())
    night = set((KP_SPLITS / f"{split}_night.txt").read_text().split())
    assert len(names) == expected
    for name in names:
        assert kp_condition(name[:5]) == ("day" if name in day else "night")
        assert name in day or name in night


def test_nyu_shifts_labels_and_keeps_hha_channels(tmp_path):
    samples = write_nyu(str(tmp_path))
    dicts = _by_id(load_nyuv2_split(str(tmp_path), "train"))
    for name, (rgb, hha, label) in samples.items():
        got_rgb, got_hha, got_label = _check_common(dicts[name])
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_array_equal(got_hha, hha.astype(np.float32))
        expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
        np.testing.assert_array_equal(got_label, expected)
        assert set(np.unique(got_label).tolist()) <= set(range(40)) | {255}


def test_rgbx_16bit_scaling_and_conditions(tmp_path):
    samples = write_rgbx(str(tmp_path))
    by_depth = _by_id(load_rgbx_split(str(tmp_path), "train", has_day_night=True))
    capped = _by_id(load_rgbx_split(str(tmp_path), "train", thermal_max=1000.0))
    for name, (rgb, x, label) in samples.items():
        got_rgb, got_x, got_label = _check_common(by_depth[name])
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_allclose(got_x, x / 65535.0 * 255.0, rtol=1e-5)
        np.testing.assert_allclose(read_rgbt(capped[name])[1], x / 1000.0 * 255.0, rtol=1e-5)
        np.testing.assert_array_equal(got_label, label)
        assert by_depth[name]["condition"] == "day"


def test_registration_is_lazy_and_sets_metadata(tmp_path):
    register_mfnet_dataset("test_mfnet_lazy", str(tmp_path / "missing"), "train")
    meta = MetadataCatalog.get("test_mfnet_lazy")
    assert len(meta.stuff_classes) == len(meta.stuff_colors) == 9
    assert meta.ignore_label == 255 and meta.evaluator_type == "rgbt_sem_seg"
    assert meta.has_day_night
    with pytest.raises(ValueError, match="train.txt: split list does not exist"):
        DatasetCatalog.get("test_mfnet_lazy")

    write_rgbx(str(tmp_path / "own"))
    register_rgbx_dataset("test_rgbx_own", str(tmp_path / "own"), "train", ["a", "b", "c"])
    assert len(DatasetCatalog.get("test_rgbx_own")) == 2
    assert MetadataCatalog.get("test_rgbx_own").stuff_classes == ["a", "b", "c"]


def test_builtin_names_registered():
    names = set(DatasetCatalog.list())
    for split in ("train", "val", "test", "test_day", "test_night"):
        assert f"mfnet_rgbt_{split}" in names and f"kp_rgbt_{split}" in names
    assert {"pst900_rgbt_train", "pst900_rgbt_test"} <= names
    assert {"nyuv2_rgbhha_train", "nyuv2_rgbhha_test"} <= names
    assert MetadataCatalog.get("kp_rgbt_test").stuff_classes[0] == "road"
    assert len(MetadataCatalog.get("nyuv2_rgbhha_test").stuff_classes) == 40
