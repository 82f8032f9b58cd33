"""A generic RGB-X layout for users' own data (thermal, HHA, or any aligned modality).

::

    ROOT/
      rgb/NAME.<ext>       8-bit RGB (png, jpg, ...)
      x/NAME.<ext>         the second modality: 1 channel (8- or 16-bit) or 3 channels
      labels/NAME.png      class ids 0..K-1, 255 = ignore
      <split>.txt          one ``NAME`` per line, or ``NAME day`` / ``NAME night``

Register a split with :func:`register_rgbx_dataset`, e.g.::

    register_rgbx_dataset("robot_train", "/data/robot", "train", ["ground", "person"])

then use ``DATASETS.TRAIN: ("robot_train",)``.
"""

import os

from detectron2.utils.colormap import colormap

from ..io import RGBTDataError
from .common import find_image, image_size, read_split_list, register_rgbt_split, strip_extension

__all__ = ["load_rgbx_split", "register_rgbx_dataset"]

_CONDITIONS = ("day", "night")


def load_rgbx_split(root, split, *, thermal_channels=1, thermal_max=None, has_day_night=False):
    """Dataset dicts of one split of the generic RGB-X layout.

    Args:
        root (str): the dataset folder.
        split (str): list name without ``.txt``.
        thermal_channels (int): 1 (a 3-channel X file is averaged) or 3.
        thermal_max (float or None): raw X value mapped to 255; None = by bit depth
            (255 for 8-bit, 65535 for 16-bit files).
        has_day_night (bool): if True every list line must be ``NAME day|night``.

    Returns:
        list[dict]: ``rgbt_layout="separate"``.
    """
    list_file = os.path.join(root, f"{split}.txt")
    dicts = []
    for fields in read_split_list(list_file):
        name = strip_extension(fields[0])
        condition = fields[1].lower() if len(fields) > 1 else None
        if condition is not None and condition not in _CONDITIONS:
            raise RGBTDataError(list_file, f"condition of {name!r} must be day or night")
        if has_day_night and condition is None:
            raise RGBTDataError(list_file, f"{name!r} has no day/night condition")
        rgb = find_image(os.path.join(root, "rgb"), name)
        height, width = image_size(rgb)
        dicts.append(
            {
                "file_name": rgb,
                "thermal_file_name": find_image(os.path.join(root, "x"), name),
                "sem_seg_file_name": os.path.join(root, "labels", f"{name}.png"),
                "height": height,
                "width": width,
                "image_id": name,
                "condition": condition,
                "rgbt_layout": "separate",
                "thermal_channels": thermal_channels,
                "thermal_max": thermal_max,
            }
        )
    return dicts


def register_rgbx_dataset(
    name,
    root,
    split,
    class_names,
    *,
    colors=None,
    thermal_channels=1,
    thermal_max=None,
    has_day_night=False,
):
    """Register one split of a user's RGB-X dataset (lazily; nothing is read now).

    Args:
        name (str): catalog name.
        root (str): the dataset folder (see the module doc for its layout).
        split (str): list name without ``.txt``.
        class_names (list[str]): class names, index = label id.
        colors (list[list[int]] or None): RGB colour per class; None = Detectron2's colormap.
        thermal_channels, thermal_max, has_day_night: see :func:`load_rgbx_split`.
    """
    if colors is None:
        colors = colormap(rgb=True, maximum=255)[: len(class_names)].astype(int).tolist()
    register_rgbt_split(
        name,
        lambda: load_rgbx_split(
            root,
            split,
            thermal_channels=thermal_channels,
            thermal_max=thermal_max,
            has_day_night=has_day_night,
        ),
        stuff_classes=class_names,
        stuff_colors=colors,
        has_day_night=has_day_night,
        image_root=os.path.join(root, "rgb"),
        sem_seg_root=os.path.join(root, "labels"),
        split_file=os.path.join(root, f"{split}.txt"),
    )
