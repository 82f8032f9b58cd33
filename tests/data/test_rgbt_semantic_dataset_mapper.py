"""The mapper keeps RGB, thermal and label aligned and emits the documented tensors."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from PIL import Image

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.data import RGBTSemanticDatasetMapper, ResizeToBaseScale, build_dataset_mapper

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
    """Crops stay aligned; crops smaller than the crop size are padded with the pixel means
    (normalised padding 0, as the model pads test images) and the ignore label."""
    dataset_dict, *_ = _write_pattern(tmp_path)
    cfg = _cfg()
    cfg.MODEL.THERMAL_PIXEL_MEAN = [30.0, 30.0, 30.0]
    mapper = build_dataset_mapper(cfg, is_train=True)
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
        assert (rgb[padded] == [124, 116, 104]).all() and (t[padded] == 30).all()
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


@pytest.mark.parametrize("base_size", [(96, 128), (128, 96)], ids=["landscape", "portrait-base"])
def test_test_mode_resizes_pair_to_base_scale_and_keeps_label(tmp_path, base_size):
    """A 64x48 pair with base scale 128x96 (either orientation: the sides fit, ratio kept) is
    fed at 128x96, bilinear; the label and the output size stay at 64x48."""
    dataset_dict, rgb, thermal, label = _write_pattern(tmp_path)
    out = build_dataset_mapper(_cfg(BASE_SIZE=base_size), is_train=False)(dataset_dict)
    assert (out["height"], out["width"]) == (48, 64)
    assert tuple(out["image"].shape) == (3, 96, 128) and tuple(out["thermal"].shape) == (3, 96, 128)
    # RGB and thermal share one float bilinear resize (no corner alignment, no antialiasing);
    # RGB is rounded back to uint8, thermal (16-bit sources) is not
    expected_rgb = torch.nn.functional.interpolate(
        torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None], size=(96, 128), mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    expected_thermal = torch.nn.functional.interpolate(
        torch.from_numpy(thermal.astype(np.float32))[None, None], size=(96, 128), mode="bilinear", align_corners=False
    )[0, 0]
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected_rgb)
    torch.testing.assert_close(out["thermal"][1], expected_thermal)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label)


def test_base_scale_resize_keeps_aspect_ratio_and_skips_native_size():
    resize = ResizeToBaseScale((480, 640))
    assert isinstance(resize.get_transform(np.zeros((480, 640, 3), np.uint8)), T.NoOpTransform)
    shrink = resize.get_transform(np.zeros((720, 1280, 3), np.uint8))  # long side limits: 640/1280
    assert (shrink.new_h, shrink.new_w) == (360, 640)
    grow = resize.get_transform(np.zeros((240, 240, 3), np.uint8))  # short side limits: 480/240
    assert (grow.new_h, grow.new_w) == (480, 480)


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
    test_augs = build_dataset_mapper(_cfg(), is_train=False).geometric.augs
    assert [type(a) for a in test_augs] == [ResizeToBaseScale]


def test_training_sample_without_label_is_an_error(tmp_path):
    dataset_dict, *_ = _write_pattern(tmp_path)
    dataset_dict["sem_seg_file_name"] = None
    with pytest.raises(ValueError, match="00001D.png: training sample without a label"):
        build_dataset_mapper(_cfg(), is_train=True)(dataset_dict)


def test_unknown_mapper_name():
    cfg = _cfg(DATASET_MAPPER_NAME="nope")
    with pytest.raises(KeyError, match="unknown INPUT.DATASET_MAPPER_NAME 'nope'"):
        build_dataset_mapper(cfg)
