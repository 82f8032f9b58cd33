"""PST900 in its published layout.

::

    PST900/
      train/ rgb/NAME.png  thermal/NAME.png  labels/NAME.png  (depth/ unused)
      test/  rgb/ thermal/ labels/ (same)

RGB is 1280x720, thermal an 8-bit single-channel PNG used as is (0-255). There is no split
list: a split is every file in ``<split>/rgb/``. No day/night information.
"""

import os

from detectron2.utils.file_io import PathManager

from ..io import RGBTDataError
from .common import image_size, register_rgbt_split

__all__ = [
    "PST900_CLASSES",
    "PST900_COLORS",
    "PST900_SPLITS",
    "load_pst900_split",
    "register_all_pst900",
]

PST900_CLASSES = ["background", "fire_extinguisher", "backpack", "hand_drill", "survivor"]
PST900_COLORS = [[0, 0, 0], [0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 255]]
PST900_SPLITS = ["train", "test"]


def load_pst900_split(root, split):
    """Dataset dicts of one PST900 split.

    Args:
        root (str): the PST900 folder.
        split (str): ``"train"`` or ``"test"``.

    Returns:
        list[dict]: one dict per file of ``<split>/rgb/`` (sorted by name), with the thermal
        and label files of the same name, ``condition=None``, ``rgbt_layout="separate"``.
    """
    rgb_dir = os.path.join(root, split, "rgb")
    if not PathManager.isdir(rgb_dir):
        raise RGBTDataError(rgb_dir, "folder does not exist")
    dicts = []
    for file in sorted(PathManager.ls(rgb_dir)):
        if file.startswith("."):
            continue
        rgb = os.path.join(rgb_dir, file)
        height, width = image_size(rgb)
        dicts.append(
            {
                "file_name": rgb,
                "thermal_file_name": os.path.join(root, split, "thermal", file),
                "sem_seg_file_name": os.path.join(root, split, "labels", file),
                "height": height,
                "width": width,
                "image_id": os.path.splitext(file)[0],
                "condition": None,
                "rgbt_layout": "separate",
                "thermal_channels": 1,
                "thermal_max": 255.0,
            }
        )
    return dicts


def register_all_pst900(root):
    """Register ``pst900_rgbt_{train,test}`` from ``root/PST900``."""
    pst_root = os.path.join(root, "PST900")
    for split in PST900_SPLITS:
        register_rgbt_split(
            f"pst900_rgbt_{split}",
            lambda split=split: load_pst900_split(pst_root, split),
            stuff_classes=PST900_CLASSES,
            stuff_colors=PST900_COLORS,
            has_day_night=False,
            image_root=os.path.join(pst_root, split, "rgb"),
            sem_seg_root=os.path.join(pst_root, split, "labels"),
        )
