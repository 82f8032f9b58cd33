"""Helpers shared by the dataset registration files."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..io import IGNORE_LABEL, RGBTDataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

__all__ = ["read_split_list", "image_size", "strip_extension", "find_image", "register_rgbt_split"]


def read_split_list(path):
    """Read a split list: one sample name per line; blank lines and ``#`` comments skipped.

    Args:
        path (str): the list file.

    Returns:
        list[list[str]]: the whitespace-separated fields of each line (first = the name).
    """
    if not PathManager.isfile(path):
        raise RGBTDataError(path, "split list does not exist")
    with PathManager.open(path, "r") as f:
        lines = [line.split("#", 1)[0].split() for line in f]
    return [fields for fields in lines if fields]


def image_size(path):
    """Height and width from an image header, without decoding the pixels.

    Returns:
        tuple: ``(height, width)``, or ``(None, None)`` when the file cannot be opened (the
        reader then reports the problem when the sample is used).
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError):
        return None, None
    return height, width


def strip_extension(name):
    """``"set00_V000_I00050.png"`` -> ``"set00_V000_I00050"``; names without one unchanged."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


def register_rgbt_split(
    name, loader, *, stuff_classes, stuff_colors, has_day_night, evaluator_type="rgbt_sem_seg", **metadata
):
    """Register one lazily loaded RGB-T split with the metadata every split carries.

    Args:
        name (str): dataset name in the catalogs.
        loader (callable): no-argument function returning the list of dataset dicts.
        stuff_classes (list[str]): class names, index = class id.
        stuff_colors (list[list[int]]): RGB colour of each class.
        has_day_night (bool): whether the dicts carry a "day"/"night" ``condition``.
        evaluator_type (str): "rgbt_sem_seg" or "rgbt_panoptic" (see ``hapnet_d2.evaluation``).
        metadata: further metadata (e.g. ``image_root``, ``sem_seg_root``).
    """
    if len(stuff_colors) != len(stuff_classes):
        raise ValueError(f"{name}: {len(stuff_classes)} classes but {len(stuff_colors)} colours")
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes),
        stuff_colors=[list(c) for c in stuff_colors],
        ignore_label=IGNORE_LABEL,
        evaluator_type=evaluator_type,
        has_day_night=has_day_night,
        **metadata,
    )


def find_image(folder, name, extensions=IMAGE_EXTENSIONS):
    """Path of ``folder/name.<ext>`` for the first extension that exists.

    Returns:
        str: the existing file, or ``folder/name<extensions[0]>`` when none exists (reading
        it then reports the missing file).
    """
    for ext in extensions:
        path = os.path.join(folder, name + ext)
        if PathManager.isfile(path):
            return path
    return os.path.join(folder, name + extensions[0])
