"""MFNet (the ``ir_seg_dataset`` release) in its published layout.

::

    MFNet/
      images/NAME.png    4-channel PNG: R, G, B, thermal (8 bit, 640x480)
      labels/NAME.png    uint8 class ids 0..8
      train.txt val.txt test.txt test_day.txt test_night.txt   one NAME per line

NAME ends in ``D`` (day) or ``N`` (night). Thermal is the 8-bit fourth channel (0-255 as is).
"""

import os

from .common import image_size, read_split_list, register_rgbt_split, strip_extension

__all__ = [
    "MFNET_CLASSES",
    "MFNET_COLORS",
    "MFNET_SPLITS",
    "load_mfnet_split",
    "register_mfnet_dataset",
    "register_all_mfnet",
]

MFNET_CLASSES = [
    "unlabeled",
    "car",
    "person",
    "bike",
    "curve",
    "car_stop",
    "guardrail",
    "color_cone",
    "bump",
]
# the palette of the MFNet/RTFNet visualisations
MFNET_COLORS = [
    [0, 0, 0],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
    [0, 0, 192],
    [128, 128, 0],
    [64, 64, 128],
    [192, 128, 128],
    [192, 64, 0],
]
MFNET_SPLITS = ["train", "val", "test", "test_day", "test_night"]
_CONDITIONS = {"D": "day", "N": "night"}


def load_mfnet_split(root, split):
    """Dataset dicts of one MFNet split.

    Args:
        root (str): the MFNet folder (holding ``images/``, ``labels/`` and the lists).
        split (str): list name without ``.txt`` (e.g. ``"train"``, ``"test_night"``).

    Returns:
        list[dict]: one dict per listed name with ``file_name`` and ``thermal_file_name``
        (both the 4-channel PNG), ``sem_seg_file_name``, ``height``, ``width`` (from the
        PNG header; None if unreadable), ``image_id``, ``condition`` ("day"/"night" from the
        name's suffix, else None), ``rgbt_layout="mfnet4"`` and ``thermal_channels=1``.
    """
    dicts = []
    for fields in read_split_list(os.path.join(root, f"{split}.txt")):
        name = strip_extension(fields[0])
        image = os.path.join(root, "images", f"{name}.png")
        height, width = image_size(image)
        dicts.append(
            {
                "file_name": image,
                "thermal_file_name": image,
                "sem_seg_file_name": os.path.join(root, "labels", f"{name}.png"),
                "height": height,
                "width": width,
                "image_id": name,
                "condition": _CONDITIONS.get(name[-1:].upper()),
                "rgbt_layout": "mfnet4",
                "thermal_channels": 1,
            }
        )
    return dicts


def register_mfnet_dataset(name, root, split, prepare=None):
    """Register one MFNet-layout split (lazily: nothing is read until it is used).

    Args:
        name (str): catalog name, e.g. ``"mfnet_rgbt_train"``.
        root (str): the MFNet-layout folder.
        split (str): list name without ``.txt``.
        prepare (callable or None): ``prepare(root)`` runs on first use, before reading (the
            synthetic dataset generates itself there); it returns the folder to read.
    """
    register_rgbt_split(
        name,
        lambda: load_mfnet_split(prepare(root) if prepare else root, split),
        stuff_classes=MFNET_CLASSES,
        stuff_colors=MFNET_COLORS,
        has_day_night=True,
        image_root=os.path.join(root, "images"),
        sem_seg_root=os.path.join(root, "labels"),
        split_file=os.path.join(root, f"{split}.txt"),
    )


def register_all_mfnet(root):
    """Register ``mfnet_rgbt_{train,val,test,test_day,test_night}`` from ``root/MFNet``."""
    for split in MFNET_SPLITS:
        register_mfnet_dataset(f"mfnet_rgbt_{split}", os.path.join(root, "MFNet"), split)
