"""Reading RGB-thermal samples from disk.

One reader for the mapper, the dataset validator and the demo. Every failure (missing file,
truncated or unreadable image, wrong channel count, sizes that disagree) raises
:class:`RGBTDataError`, whose message starts with the offending file.

A dataset dict says how its modalities are stored:

* ``rgbt_layout``: ``"mfnet4"`` (one 4-channel PNG, channels R, G, B, thermal, as PIL reads
  it; OpenCV would return B, G, R, thermal) or ``"separate"`` (RGB and thermal/X files).
* ``thermal_channels``: 1 (thermal; a 3-channel file such as KP's lwir JPEG is averaged) or
  3 (HHA and other 3-channel X modalities).
* ``thermal_max``: the raw value that maps to 255; ``None`` means the full range of the
  file's bit depth (255 for 8-bit, 65535 for 16-bit files).
* ``label_offset``: subtracted from stored label ids; ids that become negative are mapped
  to 255 (NYU: 1..40 -> 0..39, 0 -> 255).
"""

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

__all__ = ["RGBTDataError", "read_image_array", "read_rgbt", "read_label", "read_sample"]

IGNORE_LABEL = 255


class RGBTDataError(ValueError):
    """A dataset file is missing or malformed.

    Attributes:
        path (str): the offending file.
        reason (str): what is wrong with it.
    """

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image_array(path):
    """Decode an image file without any conversion.

    Args:
        path (str): image file (any format PIL reads).

    Returns:
        np.ndarray: ``HxW`` (grey, palette indices, 16-bit) or ``HxWxC`` (C = 3 or 4), with
        the file's own dtype (uint8, or uint16 for 16-bit greyscale).
    """
    if not PathManager.exists(path):
        raise RGBTDataError(path, "file does not exist")
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise RGBTDataError(path, f"unreadable or truncated image ({e})") from e
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.array(img, dtype=np.uint16)
    if img.mode == "I":
        arr = np.array(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise RGBTDataError(path, "32-bit image with values outside 0..65535")
        return arr.astype(np.uint16)
    if img.mode not in ("L", "P", "RGB", "RGBA"):
        raise RGBTDataError(path, f"unsupported image mode {img.mode}")
    return np.asarray(img)


def _channels(arr):
    return 1 if arr.ndim == 2 else arr.shape[2]


def _scale_thermal(raw, path, thermal_max):
    """Map raw thermal values to float32 on a 0-255 scale."""
    if thermal_max is None:
        thermal_max = 65535.0 if raw.dtype == np.uint16 else 255.0
    if thermal_max <= 0:
        raise RGBTDataError(path, f"thermal_max must be positive, got {thermal_max}")
    return raw.astype(np.float32) * np.float32(255.0 / thermal_max)


def _thermal_from_array(arr, path, channels, thermal_max):
    n = _channels(arr)
    if channels == 1:
        if n == 3:
            arr = arr.astype(np.float32).mean(axis=2)
        elif n != 1:
            raise RGBTDataError(path, f"expected a 1- or 3-channel thermal image, got {n}")
    elif channels == 3:
        if n != 3:
            raise RGBTDataError(path, f"expected a 3-channel X image (e.g. HHA), got {n}")
    else:
        raise ValueError(f"thermal_channels must be 1 or 3, got {channels}")
    return _scale_thermal(arr, path, thermal_max)


def read_rgbt(dataset_dict):
    """Read the RGB image and the thermal (or X) image of one sample.

    Args:
        dataset_dict (dict): a dataset dict with ``file_name``, ``thermal_file_name`` and the
            optional keys ``rgbt_layout`` (default ``"separate"``), ``thermal_channels``
            (default 1) and ``thermal_max`` (default: by bit depth), see the module doc.

    Returns:
        tuple:
            * rgb (np.ndarray): uint8 ``HxWx3`` in RGB order.
            * thermal (np.ndarray): float32 ``HxW`` (thermal_channels=1) or ``HxWx3`` on a
              0-255 scale.
    """
    layout = dataset_dict.get("rgbt_layout", "separate")
    channels = dataset_dict.get("thermal_channels", 1)
    thermal_max = dataset_dict.get("thermal_max")
    rgb_path = dataset_dict["file_name"]
    arr = read_image_array(rgb_path)
    if layout == "mfnet4":
        if _channels(arr) != 4 or arr.dtype != np.uint8:
            raise RGBTDataError(
                rgb_path,
                f"expected an 8-bit 4-channel (R,G,B,thermal) PNG, got {_channels(arr)} "
                f"channel(s) of {arr.dtype}",
            )
        return np.ascontiguousarray(arr[:, :, :3]), _scale_thermal(
            arr[:, :, 3], rgb_path, thermal_max
        )
    if layout != "separate":
        raise ValueError(f"unknown rgbt_layout {layout!r} (expected 'mfnet4' or 'separate')")
    if _channels(arr) != 3 or arr.dtype != np.uint8:
        raise RGBTDataError(
            rgb_path, f"expected an 8-bit 3-channel RGB image, got {_channels(arr)} channel(s)"
        )
    thermal_path = dataset_dict["thermal_file_name"]
    thermal = _thermal_from_array(
        read_image_array(thermal_path), thermal_path, channels, thermal_max
    )
    if thermal.shape[:2] != arr.shape[:2]:
        raise RGBTDataError(
            thermal_path,
            f"size {thermal.shape[1]}x{thermal.shape[0]} (WxH) differs from the RGB image "
            f"{rgb_path} ({arr.shape[1]}x{arr.shape[0]})",
        )
    return arr, thermal


def read_label(path, label_offset=0):
    """Read a label map of class ids.

    Args:
        path (str): single-channel (greyscale or palette) PNG of class ids.
        label_offset (int): subtracted from the stored ids; ids that become negative are
            set to 255 (ignore). Stored 255 stays 255.

    Returns:
        np.ndarray: uint8 ``HxW`` class ids, 255 = ignore.
    """
    arr = read_image_array(path)
    if arr.ndim != 2:
        raise RGBTDataError(path, f"expected a single-channel label map, got {arr.shape[2]}")
    if arr.dtype != np.uint8:
        if arr.max() > IGNORE_LABEL:
            raise RGBTDataError(path, f"label id {int(arr.max())} does not fit in 0..255")
        arr = arr.astype(np.uint8)
    if label_offset:
        ids = arr.astype(np.int16) - label_offset
        ids[(ids < 0) | (arr == IGNORE_LABEL)] = IGNORE_LABEL
        arr = ids.astype(np.uint8)
    return arr


def read_sample(dataset_dict):
    """Read RGB, thermal and (if the dict has one) the label of a sample, checking sizes.

    Args:
        dataset_dict (dict): as for :func:`read_rgbt`, plus optional ``sem_seg_file_name``
            and ``label_offset``.

    Returns:
        tuple: ``(rgb uint8 HxWx3, thermal float32 HxW or HxWx3, label uint8 HxW or None)``.
    """
    rgb, thermal = read_rgbt(dataset_dict)
    label_path = dataset_dict.get("sem_seg_file_name")
    if label_path is None:
        return rgb, thermal, None
    label = read_label(label_path, dataset_dict.get("label_offset", 0))
    if label.shape != rgb.shape[:2]:
        raise RGBTDataError(
            label_path,
            f"size {label.shape[1]}x{label.shape[0]} (WxH) differs from the image "
            f"{dataset_dict['file_name']} ({rgb.shape[1]}x{rgb.shape[0]})",
        )
    return rgb, thermal, label
