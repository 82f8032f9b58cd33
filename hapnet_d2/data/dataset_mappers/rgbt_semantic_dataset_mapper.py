"""Dataset dict -> RGB, thermal and label tensors, with aligned augmentation."""

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ..io import IGNORE_LABEL, ThermalScaling, read_sample

__all__ = [
    "RGBTSemanticDatasetMapper",
    "PadToSize",
    "ResizeToBaseScale",
    "stack_modalities",
    "split_modalities",
]


class PadToSize:
    """Pad at the bottom/right to at least ``size``, then up to a multiple of ``divisibility``.

    Each array gets its own fill: images are padded with their pixel mean, so that after the
    model's normalisation the padding is 0, like the model's own padding of a batch and of
    test images (``ImageList.from_tensors``, ``whole_inference``); labels with the ignore id.
    """

    def __init__(self, size=None, divisibility=-1):
        """
        Args:
            size (tuple[int, int] or None): minimum (height, width) after padding.
            divisibility (int): pad height and width to a multiple of this (<= 0: off).
        """
        self.size = None if size is None else tuple(size)
        self.divisibility = divisibility

    def target_size(self, height: int, width: int):
        """(height, width) after padding an array of ``height x width``."""
        th, tw = (height, width) if self.size is None else (max(height, self.size[0]), max(width, self.size[1]))
        if self.divisibility > 0:
            th = -(-th // self.divisibility) * self.divisibility
            tw = -(-tw // self.divisibility) * self.divisibility
        return th, tw

    def __call__(self, array: np.ndarray, fill) -> np.ndarray:
        """
        Args:
            array: ``[H, W]`` or ``[H, W, C]``.
            fill: a scalar, or one value per channel.
        Returns:
            ``array`` padded at the bottom/right (``array`` itself when no padding is needed).
        """
        height, width = array.shape[:2]
        th, tw = self.target_size(height, width)
        if (th, tw) == (height, width):
            return array
        fill = np.asarray(fill, dtype=np.float64)
        if np.issubdtype(array.dtype, np.integer):
            fill = fill.round()
        padded = np.empty((th, tw) + array.shape[2:], dtype=array.dtype)
        padded[...] = fill
        padded[:height, :width] = array
        return padded


def stack_modalities(rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """RGB and thermal as one float32 array, for transforms that must filter both alike.

    Args:
        rgb: ``HxWx3`` (any numeric dtype, 0-255 scale). thermal: ``HxW`` or ``HxWxC``.
    Returns:
        float32 ``HxWx(3+C)`` (C = 1 for a 2-D thermal image), RGB first.
    """
    if thermal.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"thermal {thermal.shape[:2]} and RGB {rgb.shape[:2]} sizes differ")
    thermal = thermal[:, :, None] if thermal.ndim == 2 else thermal
    return np.concatenate([rgb.astype(np.float32), thermal.astype(np.float32)], axis=2)


def split_modalities(stacked: np.ndarray, thermal_ndim: int = 2):
    """Inverse of :func:`stack_modalities`: RGB rounded to uint8, thermal float32.

    Args:
        stacked: float ``HxWx(3+C)``. thermal_ndim: 2 to return thermal as ``HxW`` (C = 1).
    Returns:
        tuple: ``(rgb uint8 HxWx3, thermal float32 HxW or HxWxC)``.
    """
    rgb = np.clip(np.rint(stacked[:, :, :3]), 0, 255).astype(np.uint8)
    thermal = np.ascontiguousarray(stacked[:, :, 3:], dtype=np.float32)
    return rgb, thermal[:, :, 0] if thermal_ndim == 2 else thermal


class ResizeToBaseScale(T.Augmentation):
    """Test-time resize to the dataset's base scale, keeping the aspect ratio (the recipe's
    "resize to the base scale"): the image is scaled by ``min(long / max(h, w), short / min(h, w))``
    with ``(short, long)`` the base scale's sides, so it fits the base scale. An image already at
    the base scale (MFNet, PST900, KP, NYU at their published sizes) is left untouched.
    """

    def __init__(self, base_size):
        """
        Args:
            base_size (tuple[int, int]): ``INPUT.BASE_SIZE`` (height, width).
        """
        super().__init__()
        self.short, self.long = min(base_size), max(base_size)

    def get_transform(self, image):
        h, w = image.shape[:2]
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, self.short, self.long)
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w)


class RGBTSemanticDatasetMapper:
    """Map an RGB-T dataset dict to the inputs of HAPNet.

    Training: one geometric augmentation (random resize, square crop with a single-category
    area limit, flip) is drawn once and applied to RGB, thermal and label alike (RGB and thermal
    resized in one bilinear call, see :meth:`apply_geometric`);
    photometric augmentation (brightness, contrast, saturation) touches the RGB image only;
    then all three are padded to the crop size (:class:`PadToSize`; images with their pixel mean).
    Test: RGB and thermal resized to the base scale (:class:`ResizeToBaseScale`), no other
    augmentation; the label stays at the original size, where predictions are evaluated
    (``height``/``width`` are the original size).

    The output dict is a copy of the input plus:

    * ``"image"``: uint8 tensor ``[3,H,W]`` in ``image_format`` channel order;
    * ``"thermal"``: float32 tensor ``[3,H,W]`` on a 0-255 scale (1 channel replicated);
    * ``"sem_seg"``: long tensor ``[H,W]``, 255 = ignore (when the dict has a label file);
    * ``"height"``/``"width"``: filled from the image when the dict has None.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        geometric_augmentations,
        photometric_augmentations,
        image_format,
        ignore_label=IGNORE_LABEL,
        pad=None,
        rgb_pad_value=(0.0, 0.0, 0.0),
        thermal_pad_value=(0.0, 0.0, 0.0),
        thermal_scaling=None,
    ):
        """
        Args:
            is_train (bool): training (augment) or inference mapping.
            geometric_augmentations (list[Augmentation]): applied to RGB, thermal and label.
            photometric_augmentations (list[Augmentation]): applied to the RGB image only.
            image_format (str): "RGB" or "BGR", channel order of ``"image"``.
            ignore_label (int): label id ignored by the loss; also the crop's ignored id and the
                label padding.
            pad (PadToSize or None): padding after augmentation (training: to the crop size).
            rgb_pad_value, thermal_pad_value (tuple[float]): per-channel image padding, RGB order;
                the model's pixel means, so that padding is 0 once normalised.
            thermal_scaling (ThermalScaling or None): how 16-bit thermal becomes 0-255
                (``INPUT.THERMAL_SCALING``; None: full range).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be RGB or BGR, got {image_format!r}")
        self.is_train = is_train
        self.geometric = T.AugmentationList(geometric_augmentations)
        self.photometric = T.AugmentationList(photometric_augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.pad = pad
        self.rgb_pad_value = tuple(rgb_pad_value)
        self.thermal_pad_value = tuple(thermal_pad_value)
        self.thermal_scaling = thermal_scaling

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        geometric, photometric, pad = [], [], None
        if is_train:
            base_h, base_w = cfg.INPUT.BASE_SIZE
            min_ratio, max_ratio = cfg.INPUT.RESIZE_RATIO_RANGE
            geometric.append(T.ResizeScale(min_ratio, max_ratio, base_h, base_w))
            if cfg.INPUT.CROP.ENABLED:
                geometric.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        ignore_label,
                    )
                )
            if cfg.INPUT.RANDOM_FLIP != "none":
                geometric.append(
                    T.RandomFlip(
                        horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                        vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                    )
                )
            crop = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None
            pad = PadToSize(crop, cfg.INPUT.SIZE_DIVISIBILITY)
            if cfg.INPUT.COLOR_AUG_SSD:
                photometric = [
                    T.RandomApply(T.RandomBrightness(0.875, 1.125)),
                    T.RandomApply(T.RandomContrast(0.5, 1.5)),
                    T.RandomApply(T.RandomSaturation(0.5, 1.5)),
                ]
        else:
            geometric.append(ResizeToBaseScale(cfg.INPUT.BASE_SIZE))
        return {
            "is_train": is_train,
            "geometric_augmentations": geometric,
            "photometric_augmentations": photometric,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "pad": pad,
            "rgb_pad_value": cfg.MODEL.PIXEL_MEAN,
            "thermal_pad_value": cfg.MODEL.THERMAL_PIXEL_MEAN,
            "thermal_scaling": ThermalScaling.from_cfg(cfg),
        }

    def read(self, dataset_dict):
        """RGB uint8 ``HxWx3``, thermal float32 and label uint8 ``HxW`` (or None) of a sample."""
        return read_sample(dataset_dict, self.thermal_scaling)

    def apply_geometric(self, rgb, thermal, label=None):
        """Draw the geometric augmentation once and apply it to RGB, thermal and label.

        RGB and thermal are resized together, as one float ``HxWx(3+C)`` array (bilinear, no
        antialiasing: Detectron2's float path of ``ResizeTransform``, like the reference's one
        OpenCV ``INTER_LINEAR`` call on the stacked float image), so identical content stays
        identical in both modalities; RGB is then rounded back to uint8 (at most 0.5 grey
        levels off the float result). The label takes the nearest-neighbour path.

        Args:
            rgb: uint8 ``HxWx3``. thermal: float32 ``HxW`` or ``HxWxC`` (0-255 scale).
            label: uint8 ``HxW`` or None (then it steers no crop and is not transformed).
        Returns:
            tuple: ``(rgb uint8 h x w x 3, thermal float32 h x w [x C], label or None,
            transforms)``, ``transforms`` the drawn ``TransformList``.
        """
        stacked = stack_modalities(rgb, thermal)
        aug_input = T.AugInput(stacked, sem_seg=label)
        transforms = self.geometric(aug_input)
        rgb, thermal = split_modalities(aug_input.image, thermal.ndim)
        return rgb, thermal, aug_input.sem_seg, transforms

    def transform_annotations(self, dataset_dict, transforms):
        """Hook for subclasses: apply the sample's geometric ``transforms`` (a
        ``TransformList``) to further annotations of ``dataset_dict``, in place. Nothing here."""

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one dict of a registered RGB-T dataset.

        Returns:
            dict: the input entries plus ``image``, ``thermal`` and ``sem_seg`` tensors.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        rgb, thermal, label = self.read(dataset_dict)
        if dataset_dict.get("height") is None or dataset_dict.get("width") is None:
            dataset_dict["height"], dataset_dict["width"] = rgb.shape[:2]
        if label is None and self.is_train:
            raise ValueError(f"{dataset_dict['file_name']}: training sample without a label file")

        # at test time the label keeps its original size (predictions are resized back to it)
        rgb, thermal, aug_label, transforms = self.apply_geometric(
            rgb, thermal, label if self.is_train else None
        )
        if self.is_train:
            label = aug_label
        self.transform_annotations(dataset_dict, transforms)
        photometric_input = T.AugInput(rgb)
        self.photometric(photometric_input)
        rgb = photometric_input.image

        if thermal.ndim == 2:
            thermal = np.repeat(thermal[:, :, None], 3, axis=2)
        if self.pad is not None:
            rgb = self.pad(rgb, self.rgb_pad_value)
            thermal = self.pad(thermal, self.thermal_pad_value)
            if label is not None:
                label = self.pad(label, self.ignore_label)
        if self.image_format == "BGR":
            rgb = rgb[:, :, ::-1]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        dataset_dict["thermal"] = torch.as_tensor(
            np.ascontiguousarray(thermal.transpose(2, 0, 1), dtype=np.float32)
        )
        if label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(label.astype(np.int64))
        return dataset_dict
