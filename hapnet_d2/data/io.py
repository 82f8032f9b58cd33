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

16-bit thermal images (raw camera counts, e.g. 14-bit 0..16383) are scaled to 0-255 by a
:class:`ThermalScaling` (``INPUT.THERMAL_SCALING``; the demo's ``--thermal-scaling``): the full
range (``thermal_max`` or 65535), a fixed range of counts, or per-image percentiles. 8-bit
thermal is always divided by 255 (or ``thermal_max``), whatever the mode.
"""

import logging
from collections import Counter

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

__all__ = [
    "RGBTDataError",
    "ThermalScaling",
    "ThermalStats",
    "read_image_array",
    "read_rgbt",
    "read_label",
    "read_sample",
]

IGNORE_LABEL = 255
THERMAL_SCALING_MODES = ("full", "fixed", "percentile")
# a 16-bit image whose values span less than this share of the mapped range gets a warning
LOW_RANGE_SHARE = 0.25

logger = logging.getLogger(__name__)
_warned_low_range = set()  # files already warned about (once per file and process)


class RGBTDataError(ValueError):
    """A dataset file is missing or malformed.

    Attributes:
        path (str): the offending file.
        reason (str): what is wrong with it.
    """

    def __init__(self, path, reason=None):
        """
        Args:
            path: the offending file.
            reason: what is wrong with it. None: ``path`` is a whole message (how PyTorch's
                DataLoader rebuilds an error raised in a worker process).
        """
        super().__init__(path, reason)
        self.path = "" if reason is None else str(path)
        self.reason = str(path) if reason is None else reason

    def __str__(self):
        return self.reason if not self.path else f"{self.path}: {self.reason}"


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


class ThermalScaling:
    """How a 16-bit thermal image (raw counts) becomes float32 on the 0-255 scale.

    * ``"full"``: ``raw * 255 / thermal_max`` (``thermal_max`` from the dataset dict, else
      65535); not clipped.
    * ``"fixed"``: ``(raw - low) * 255 / (high - low)`` for ``value_range = (low, high)``
      counts, clipped to 0-255.
    * ``"percentile"``: as ``"fixed"`` with ``(low, high)`` the image's own ``percentiles``
      (per image, like a camera's automatic gain control); a uniform image becomes 0.

    Under ``"full"`` and ``"fixed"`` a 16-bit image whose values span less than a quarter of
    the mapped range is warned about (``logger.warning``, one line, once per file).
    8-bit images are not affected by the mode (``raw * 255 / (thermal_max or 255)``).
    """

    def __init__(self, mode="full", value_range=(0.0, 65535.0), percentiles=(1.0, 99.0),
                 warn_low_range=True):
        """
        Args:
            mode (str): ``"full"``, ``"fixed"`` or ``"percentile"``.
            value_range (tuple[float, float]): ``(low, high)`` raw counts of ``"fixed"``.
            percentiles (tuple[float, float]): ``(low, high)`` in [0, 100] of ``"percentile"``.
            warn_low_range (bool): warn about 16-bit images that use little of their range.

        Raises:
            ValueError: unknown mode, ``low >= high``, percentiles outside [0, 100].
        """
        if mode not in THERMAL_SCALING_MODES:
            raise ValueError(f"thermal scaling mode must be one of {THERMAL_SCALING_MODES}, got {mode!r}")
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"thermal range (min, max) needs min < max, got ({low:g}, {high:g})")
        p_low, p_high = (float(v) for v in percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise ValueError(f"thermal percentiles need 0 <= low < high <= 100, got ({p_low:g}, {p_high:g})")
        self.mode = mode
        self.value_range = (low, high)
        self.percentiles = (p_low, p_high)
        self.warn_low_range = warn_low_range

    @classmethod
    def from_cfg(cls, cfg):
        """The scaling of ``INPUT.THERMAL_SCALING``, ``INPUT.THERMAL_RANGE`` and
        ``INPUT.THERMAL_PERCENTILES``; a bad value raises ``hapnet_d2.config.ConfigError``."""
        from ..config import ConfigError

        try:
            return cls(cfg.INPUT.THERMAL_SCALING, cfg.INPUT.THERMAL_RANGE, cfg.INPUT.THERMAL_PERCENTILES)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"INPUT.THERMAL_SCALING / THERMAL_RANGE / THERMAL_PERCENTILES: {e}") from None

    def __repr__(self):
        detail = {"fixed": f", range={self.value_range}", "percentile": f", percentiles={self.percentiles}"}
        return f"ThermalScaling({self.mode!r}{detail.get(self.mode, '')})"

    def __call__(self, raw, path, thermal_max=None):
        """
        Args:
            raw (np.ndarray): ``HxW`` or ``HxWx3`` thermal values (uint8, uint16 or float32).
            path (str): the file, for errors and warnings.
            thermal_max (float or None): the dataset's raw value of 255 (``"full"`` mode).

        Returns:
            np.ndarray: float32 of ``raw``'s shape on a 0-255 scale.
        """
        if raw.dtype != np.uint16 or self.mode == "full":
            if thermal_max is None:
                thermal_max = 65535.0 if raw.dtype == np.uint16 else 255.0
            if thermal_max <= 0:
                raise RGBTDataError(path, f"thermal_max must be positive, got {thermal_max}")
            if raw.dtype == np.uint16:
                self._check_range(raw, path, 0.0, float(thermal_max), "full scale")
            return raw.astype(np.float32) * np.float32(255.0 / thermal_max)
        if self.mode == "fixed":
            low, high = self.value_range
            self._check_range(raw, path, low, high, "fixed range")
        else:
            low, high = (float(v) for v in np.percentile(raw, self.percentiles))
            high = max(high, low + 1.0)  # a uniform image: everything at `low` becomes 0
        out = (raw.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        return np.clip(out, 0.0, 255.0, out=out)

    def _check_range(self, raw, path, low, high, what):
        """Warn once per file when the values of ``raw`` span < 1/4 of ``[low, high]``."""
        if not self.warn_low_range or path in _warned_low_range:
            return
        used = min(float(raw.max()), high) - max(float(raw.min()), low)
        if used < LOW_RANGE_SHARE * (high - low):
            _warned_low_range.add(path)
            logger.warning(
                f"{path}: 16-bit thermal uses {max(used, 0.0) / (high - low):.0%} of its {what} "
                f"{low:g}..{high:g} (values {int(raw.min())}..{int(raw.max())}), so it looks nearly "
                f"uniform to the model; set INPUT.THERMAL_SCALING fixed with INPUT.THERMAL_RANGE, or "
                f"percentile (demo: --thermal-scaling)"
            )


class ThermalStats:
    """Bit depths and raw value range of the thermal images read (the dataset validator).

    Attributes:
        bit_depths (Counter): images per bit depth (8 or 16).
        min, max (float or None): smallest and largest raw thermal value seen.
    """

    def __init__(self):
        self.bit_depths = Counter()
        self.min = None
        self.max = None

    def add(self, raw):
        """Count one raw thermal image (uint8 or uint16 array, before any scaling)."""
        self.bit_depths[16 if raw.dtype == np.uint16 else 8] += 1
        low, high = float(raw.min()), float(raw.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)

    def summary(self):
        """One line, e.g. ``16-bit (120 images), raw values 0..16383``."""
        if not self.bit_depths:
            return "no thermal image read"
        depths = ", ".join(f"{bits}-bit ({n} images)" for bits, n in sorted(self.bit_depths.items()))
        return f"{depths}, raw values {self.min:g}..{self.max:g}"


_DEFAULT_SCALING = ThermalScaling()


def _scale_thermal(raw, path, thermal_max, scaling=None):
    """Map raw thermal values to float32 on a 0-255 scale (see :class:`ThermalScaling`)."""
    return (scaling or _DEFAULT_SCALING)(raw, path, thermal_max)


def _thermal_from_array(arr, path, channels, thermal_max, scaling=None, stats=None):
    if stats is not None:
        stats.add(arr)
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
    return _scale_thermal(arr, path, thermal_max, scaling)


def read_rgbt(dataset_dict, thermal_scaling=None, thermal_stats=None):
    """Read the RGB image and the thermal (or X) image of one sample.

    Args:
        dataset_dict (dict): a dataset dict with ``file_name``, ``thermal_file_name`` and the
            optional keys ``rgbt_layout`` (default ``"separate"``), ``thermal_channels``
            (default 1) and ``thermal_max`` (default: by bit depth), see the module doc.
        thermal_scaling (ThermalScaling or None): how 16-bit thermal is scaled (None: full).
        thermal_stats (ThermalStats or None): if given, counts the raw thermal image.

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
        if thermal_stats is not None:
            thermal_stats.add(arr[:, :, 3])
        return np.ascontiguousarray(arr[:, :, :3]), _scale_thermal(
            arr[:, :, 3], rgb_path, thermal_max, thermal_scaling
        )
    if layout != "separate":
        raise ValueError(f"unknown rgbt_layout {layout!r} (expected 'mfnet4' or 'separate')")
    if _channels(arr) != 3 or arr.dtype != np.uint8:
        raise RGBTDataError(
            rgb_path, f"expected an 8-bit 3-channel RGB image, got {_channels(arr)} channel(s)"
        )
    thermal_path = dataset_dict["thermal_file_name"]
    thermal = _thermal_from_array(
        read_image_array(thermal_path), thermal_path, channels, thermal_max, thermal_scaling, thermal_stats
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


def read_sample(dataset_dict, thermal_scaling=None, thermal_stats=None):
    """Read RGB, thermal and (if the dict has one) the label of a sample, checking sizes.

    Args:
        dataset_dict (dict): as for :func:`read_rgbt`, plus optional ``sem_seg_file_name``
            and ``label_offset``.
        thermal_scaling, thermal_stats: as for :func:`read_rgbt`.

    Returns:
        tuple: ``(rgb uint8 HxWx3, thermal float32 HxW or HxWx3, label uint8 HxW or None)``.
    """
    rgb, thermal = read_rgbt(dataset_dict, thermal_scaling, thermal_stats)
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
