"""NYU-Depth V2 as RGB + HHA (the RGB-X use of HAPNet), 40 classes.

::

    NYUDepthv2/
      RGB/NAME.jpg (or .png)      colour image, 640x480
      HHA/NAME.png (or .jpg)      3-channel HHA (datasets/prepare_nyu_hha.py writes these)
      Label/NAME.png              NYU40 ids 1..40, 0 = unlabelled
      Depth/NAME.png              16-bit millimetres (only needed to compute HHA)
      train.txt (795) test.txt (654)   one NAME per line

Labels are shifted by one on reading (1..40 -> 0..39, 0 -> 255 ignore). HHA is 8-bit and
used as is (0-255), fed where thermal goes.
"""

import os

from detectron2.utils.colormap import colormap

from .common import find_image, image_size, read_split_list, register_rgbt_split, strip_extension

__all__ = ["NYU40_CLASSES", "NYU40_COLORS", "NYU_SPLITS", "load_nyuv2_split", "register_all_nyuv2"]

NYU40_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]  # fmt: skip
NYU40_COLORS = colormap(rgb=True, maximum=255)[: len(NYU40_CLASSES)].astype(int).tolist()
NYU_SPLITS = ["train", "test"]


def load_nyuv2_split(root, split):
    """Dataset dicts of one NYU-Depth V2 split (RGB + HHA).

    Args:
        root (str): the NYUDepthv2 folder.
        split (str): ``"train"`` or ``"test"``.

    Returns:
        list[dict]: ``rgbt_layout="separate"``, ``thermal_channels=3`` (HHA),
        ``label_offset=1``, ``condition=None``.
    """
    dicts = []
    for fields in read_split_list(os.path.join(root, f"{split}.txt")):
        name = strip_extension(fields[0])
        rgb = find_image(os.path.join(root, "RGB"), name, (".jpg", ".png"))
        height, width = image_size(rgb)
        dicts.append(
            {
                "file_name": rgb,
                "thermal_file_name": find_image(os.path.join(root, "HHA"), name, (".png", ".jpg")),
                "sem_seg_file_name": os.path.join(root, "Label", f"{name}.png"),
                "height": height,
                "width": width,
                "image_id": name,
                "condition": None,
                "rgbt_layout": "separate",
                "thermal_channels": 3,
                "thermal_max": 255.0,
                "label_offset": 1,
            }
        )
    return dicts


def register_all_nyuv2(root):
    """Register ``nyuv2_rgbhha_{train,test}`` from ``root/NYUDepthv2``."""
    nyu_root = os.path.join(root, "NYUDepthv2")
    for split in NYU_SPLITS:
        register_rgbt_split(
            f"nyuv2_rgbhha_{split}",
            lambda split=split: load_nyuv2_split(nyu_root, split),
            stuff_classes=NYU40_CLASSES,
            stuff_colors=NYU40_COLORS,
            has_day_night=False,
            image_root=os.path.join(nyu_root, "RGB"),
            sem_seg_root=os.path.join(nyu_root, "Label"),
            split_file=os.path.join(nyu_root, f"{split}.txt"),
        )
