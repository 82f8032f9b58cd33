"""The mapper keeps RGB, thermal and label aligned and emits the documented tensors."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from PIL import Image

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.data import RGBTSemanticDatasetMapper, build_dataset_mapper

NUM_CLASSES = 6
PALETTE = np.array(
    [[10, 20, 30], [200, 40, 60], [30, 220, 90], [120, 130, 250], [250, 250, 0], [90, 0, 160]],
    np.uint8,
)


def _thermal_of(label):
    return 40.0 * label + 15.0


def _write_pattern(tmp_path, height=48, width=64, block=8, seed=0):
    """A block pattern where RGB and thermal are functions of the label."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, NUM_CLASSES, (height // block, width // block))
    label = np.kron(blocks, np.ones((block, block), np.int64)).astype(np.uint8)
    rgb = PALETTE[label]
    thermal = _thermal_of(label).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, thermal])).save(tmp_path / "00001D.png")
    Image.fromarray(label).save(tmp_path / "label.png")
    return (
        {
            "file_name": str(tmp_path / "00001D.png"),
            "thermal_file_name": str(tmp_path / "00001D.png"),
            "sem_seg_file_name": str(tmp_path / "label.png"),
            "height": None,
            "width": None,
            "image_id": "00001D",
            "condition": "day",
            "rgbt_layout": "mfnet4",
        },
        rgb,
        thermal,
        label,
    )


def _cfg(**input_overrides):
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.INPUT.BASE_SIZE = (48, 64)
    cfg.INPUT.CROP.SIZE = (40, 40)
    for key, value in input_overrides.items():
        setattr(cfg.INPUT, key, value)
    return cfg


def _interior(label):
    """Pixels whose 3x3 neighbourhood, inside the crop, has one label (so interpolation
    cannot have mixed classes there)."""
    padded = np.pad(label.astype(np.int64), 1, constant_values=-1)
    same = np.ones(label.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


def test_training_augmentation_keeps_modalities_aligned(tmp_path):
    dataset_dict, *_ = _write_pattern(tmp_path)
    mapper = build_dataset_mapper(_cfg(), is_train=True)
    np.random.seed(0)
    padding_seen = set()
    for _ in range(25):
        out = mapper(dataset_dict)
        image, thermal, sem_seg = out["image"], out["thermal"], out["sem_seg"]
        assert image.dtype == torch.uint8 and thermal.dtype == torch.float32
        assert sem_seg.dtype == torch.long
        assert image.shape == thermal.shape == (3, 40, 40) and sem_seg.shape == (40, 40)
        assert torch.equal(thermal[0], thermal[1]) and torch.equal(thermal[0], thermal[2])
        label = sem_seg.numpy()
        rgb = image.permute(1, 2, 0).numpy().astype(int)
        t = thermal[0].numpy()
        padded = label == 255
        assert (rgb[padded] == 0).all() and (t[padded] == 0).all()
        inner = _interior(label) & ~padded
        assert inner.sum() > 0.2 * (~padded).sum()
        assert np.abs(rgb[inner] - PALETTE[label[inner]]).max() <= 1
        np.testing.assert_allclose(t[inner], _thermal_of(label[inner]), atol=0.5)
        padding_seen.add(bool(padded.any()))
    assert padding_seen == {False, True}, "expected padded and unpadded crops in 25 draws"


def test_flip_moves_all_modalities(tmp_path):
    dataset_dict, rgb, thermal, label = _write_pattern(tmp_path)
    mapper = RGBTSemanticDatasetMapper(
        is_train=True,
        geometric_augmentations=[T.RandomFlip(prob=1.0)],
        photometric_augmentations=[],
        image_format="RGB",
    )
    out = mapper(dataset_dict)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), rgb[:, ::-1])
    np.testing.assert_array_equal(out["thermal"][0].numpy(), thermal[:, ::-1])
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label[:, ::-1])


def test_test_mode_keeps_size_and_pixels_bgr(tmp_path):
    dataset_dict, rgb, thermal, label = _write_pattern(tmp_path)
    out = build_dataset_mapper(_cfg(FORMAT="BGR"), is_train=False)(dataset_dict)
    assert (out["height"], out["width"]) == (48, 64)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), rgb[:, :, ::-1])
    np.testing.assert_array_equal(out["thermal"][2].numpy(), thermal)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label)
    assert out["condition"] == "day" and out["image_id"] == "00001D"


def test_photometric_changes_rgb_only(tmp_path):
    dataset_dict, rgb, thermal, label = _write_pattern(tmp_path)
    mapper = RGBTSemanticDatasetMapper(
        is_train=True,
        geometric_augmentations=[],
        photometric_augmentations=[T.RandomContrast(0.5, 0.5)],
        image_format="RGB",
    )
    out = mapper(dataset_dict)
    assert not np.array_equal(out["image"].permute(1, 2, 0).numpy(), rgb)
    np.testing.assert_array_equal(out["thermal"][0].numpy(), thermal)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label)


def test_photometric_built_from_config(tmp_path):
    mapper = build_dataset_mapper(_cfg(COLOR_AUG_SSD=True), is_train=True)
    assert len(mapper.photometric.augs) == 3
    assert len(build_dataset_mapper(_cfg(), is_train=False).geometric.augs) == 0


def test_training_sample_without_label_is_an_error(tmp_path):
    dataset_dict, *_ = _write_pattern(tmp_path)
    dataset_dict["sem_seg_file_name"] = None
    with pytest.raises(ValueError, match="00001D.png: training sample without a label"):
        build_dataset_mapper(_cfg(), is_train=True)(dataset_dict)


def test_unknown_mapper_name():
    cfg = _cfg(DATASET_MAPPER_NAME="nope")
    with pytest.raises(KeyError, match="unknown INPUT.DATASET_MAPPER_NAME 'nope'"):
        build_dataset_mapper(cfg)
