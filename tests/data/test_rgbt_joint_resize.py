"""RGB and thermal go through one resize with one filter: identical content stays identical."""
import numpy as np
import pytest
import torch
from PIL import Image

from hapnet_d2.data import build_dataset_mapper
from test_rgbt_semantic_dataset_mapper import _cfg


def _write_identical_pair(tmp_path, height=48, width=64, seed=0):
    """A 4-channel MFNet-style PNG whose R, G, B and thermal channels are the same noise image
    (fine texture: an antialiasing filter would blur RGB but not thermal)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    label = (np.arange(width)[None, :] * 4 // width * np.ones((height, 1), np.int64)).astype(np.uint8)
    Image.fromarray(np.dstack([grey, grey, grey, grey])).save(tmp_path / "00001D.png")
    Image.fromarray(label).save(tmp_path / "label.png")
    return {
        "file_name": str(tmp_path / "00001D.png"),
        "thermal_file_name": str(tmp_path / "00001D.png"),
        "sem_seg_file_name": str(tmp_path / "label.png"),
        "height": None,
        "width": None,
        "image_id": "00001D",
        "rgbt_layout": "mfnet4",
    }


@pytest.mark.parametrize("ratio", [0.55, 0.8, 1.3, 1.9])
def test_identical_rgb_and_thermal_stay_identical_after_training_augmentation(tmp_path, ratio):
    dataset_dict = _write_identical_pair(tmp_path)
    mapper = build_dataset_mapper(
        _cfg(RESIZE_RATIO_RANGE=(ratio, ratio), CROP=_crop_cfg()), is_train=True
    )
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(3):  # different crops and flips
        out = mapper(dataset_dict)
        rgb, thermal = out["image"].double(), out["thermal"].double()
        assert rgb.shape == thermal.shape
        valid = out["sem_seg"] != 255  # padding: each modality gets its own pixel mean
        for c in range(3):
            diff = (rgb[c] - thermal[0])[valid].abs().max()
            assert diff <= 0.5, f"ratio {ratio}: channel {c} differs by {float(diff)}"  # RGB rounding only
            torch.testing.assert_close(rgb[c][valid], rgb[0][valid])
        # the resize really interpolated (thermal is not a copy of input pixels)
        assert not torch.equal(thermal[0][valid], thermal[0][valid].round())


def _crop_cfg():
    from detectron2.config import CfgNode as CN

    return CN({"ENABLED": True, "TYPE": "absolute", "SIZE": (40, 40), "SINGLE_CATEGORY_MAX_AREA": 1.0})


def test_test_time_resize_keeps_identical_content_identical(tmp_path):
    dataset_dict = _write_identical_pair(tmp_path)
    out = build_dataset_mapper(_cfg(BASE_SIZE=(96, 128)), is_train=False)(dataset_dict)
    rgb, thermal = out["image"].double(), out["thermal"].double()
    assert tuple(rgb.shape) == (3, 96, 128)
    assert (rgb - thermal).abs().max() <= 0.5
