"""KP Day-Night (KAIST multispectral pedestrian frames with semantic labels).

::

    KP/
      images/setXX/VYYY/visible/IZZZZZ.jpg   RGB, 640x512
      images/setXX/VYYY/lwir/IZZZZZ.jpg      thermal, 3 equal channels -> averaged to one
      labels/setXX_VYYY_IZZZZZ.png           Cityscapes train ids 0..18, 255 = ignore
      train.txt val.txt test.txt test_day.txt test_night.txt
                                             names like ``set00_V000_I00050.png``

Day or night follows the KAIST sets: set00-02 and set06-08 are day, set03-05 and set09-11
night. Thermal values are 8-bit (0-255 as is).
"""

import os

from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from ..io import RGBTDataError
from .common import image_size, read_split_list, register_rgbt_split, strip_extension

__all__ = [
    "KP_CLASSES",
    "KP_COLORS",
    "KP_SPLITS",
    "kp_condition",
    "load_kp_split",
    "register_all_kp",
]

_TRAIN_CATEGORIES = sorted(
    (c for c in CITYSCAPES_CATEGORIES if 0 <= c["trainId"] < 255), key=lambda c: c["trainId"]
)
KP_CLASSES = [c["name"] for c in _TRAIN_CATEGORIES]
KP_COLORS = [list(c["color"]) for c in _TRAIN_CATEGORIES]
KP_SPLITS = ["train", "val", "test", "test_day", "test_night"]
_DAY_SETS = {0, 1, 2, 6, 7, 8}
_NIGHT_SETS = {3, 4, 5, 9, 10, 11}


def kp_condition(set_name):
    """``"set07"`` -> ``"day"``, ``"set09"`` -> ``"night"``; unknown sets -> None."""
    number = int(set_name[3:]) if set_name[3:].isdigit() else -1
    if number in _DAY_SETS:
        return "day"
    return "night" if number in _NIGHT_SETS else None


def load_kp_split(root, split):
    """Dataset dicts of one KP Day-Night split.

    Args:
        root (str): the KP folder.
        split (str): list name without ``.txt``.

    Returns:
        list[dict]: one dict per listed name, ``rgbt_layout="separate"``, ``thermal_channels=1``
        (the 3-channel lwir JPEG is averaged), ``condition`` from the set number.
    """
    list_file = os.path.join(root, f"{split}.txt")
    dicts = []
    for fields in read_split_list(list_file):
        name = strip_extension(fields[0])
        parts = name.split("_")
        if len(parts) != 3:
            raise RGBTDataError(list_file, f"name {fields[0]!r} is not like setXX_VYYY_IZZZZZ")
        set_name, video, frame = parts
        frame_dir = os.path.join(root, "images", set_name, video)
        rgb = os.path.join(frame_dir, "visible", f"{frame}.jpg")
        height, width = image_size(rgb)
        dicts.append(
            {
                "file_name": rgb,
                "thermal_file_name": os.path.join(frame_dir, "lwir", f"{frame}.jpg"),
                "sem_seg_file_name": os.path.join(root, "labels", f"{name}.png"),
                "height": height,
                "width": width,
                "image_id": name,
                "condition": kp_condition(set_name),
                "rgbt_layout": "separate",
                "thermal_channels": 1,
                "thermal_max": 255.0,
            }
        )
    return dicts


def register_all_kp(root):
    """Register ``kp_rgbt_{train,val,test,test_day,test_night}`` from ``root/KP``."""
    kp_root = os.path.join(root, "KP")
    for split in KP_SPLITS:
        register_rgbt_split(
            f"kp_rgbt_{split}",
            lambda split=split: load_kp_split(kp_root, split),
            stuff_classes=KP_CLASSES,
            stuff_colors=KP_COLORS,
            has_day_night=True,
            image_root=os.path.join(kp_root, "images"),
            sem_seg_root=os.path.join(kp_root, "labels"),
            split_file=os.path.join(kp_root, f"{split}.txt"),
        )
