"""Semantic label maps -> COCO panoptic ground truth, by connected components of thing classes.

No public RGB-thermal dataset has panoptic labels. This conversion is an approximation: each
8-connected component of a thing class becomes one instance, so touching objects of one class
(two pedestrians side by side, a row of parked cars) merge into one instance, and one object
split by an occluder becomes two. Components smaller than ``min_area`` pixels become void
(label 0 in the PNG: neither counted nor penalised by PQ). Every stuff class present becomes one
segment; ignore pixels (255) become void. Nothing is marked crowd.

Layout written into the dataset folder (the synthetic dataset's)::

    ROOT/panoptic/NAME.png              segment ids, R + 256 G + 256^2 B
    ROOT/panoptic/panoptic_SPLIT.json   images, annotations, categories of one split
"""

import os

import numpy as np
from scipy import ndimage

from .io import IGNORE_LABEL, read_label
from .panoptic_format import (
    LABEL_DIVISOR,
    coco_categories,
    segments_info_of,
    write_panoptic_json,
    write_panoptic_png,
)

__all__ = ["DEFAULT_THING_CLASSES", "panoptic_ids_from_semantic", "convert_split", "PANOPTIC_DIRNAME"]

PANOPTIC_DIRNAME = "panoptic"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# thing classes per dataset format (class names); every other class is stuff. MFNet: the countable
# objects, color_cone included, as in the synthetic panoptic data (same class list)
DEFAULT_THING_CLASSES = {
    "mfnet": ("car", "person", "bike", "color_cone"),
    "kp": ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    "pst900": ("fire_extinguisher", "backpack", "hand_drill", "survivor"),
}


def panoptic_ids_from_semantic(label, thing_ids, min_area):
    """Segment ids of one label map.

    Args:
        label (np.ndarray): uint8 ``HxW`` class ids, 255 = ignore.
        thing_ids (set[int]): class ids whose connected components become instances.
        min_area (int): components with fewer pixels become void.

    Returns:
        np.ndarray: int32 ``HxW``: ``(class + 1) * 1000`` on stuff pixels, ``(class + 1) * 1000 + k``
        on the k-th component of a thing class (in scan order), 0 on void.
    """
    ids = np.zeros(label.shape, np.int32)
    for cls in np.unique(label):
        if cls == IGNORE_LABEL:
            continue
        mask = label == cls
        base = (int(cls) + 1) * LABEL_DIVISOR
        if int(cls) not in thing_ids:
            ids[mask] = base
            continue
        components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if count >= LABEL_DIVISOR:
            raise ValueError(f"class {int(cls)} has {count} components; at most {LABEL_DIVISOR - 1} fit the ids")
        areas = np.bincount(components.ravel(), minlength=count + 1)
        k = 0
        for component in range(1, count + 1):
            if areas[component] >= min_area:
                k += 1
                ids[components == component] = base + k
    return ids


def convert_split(dicts, root, split, class_names, colors, thing_ids, min_area=16, condition_of=None):
    """Write the panoptic PNGs of a split's label maps and its JSON.

    Args:
        dicts (list[dict]): the split's RGB-T dataset dicts (``image_id``,
            ``sem_seg_file_name``, ``label_offset``, ``condition``).
        root (str): the dataset folder; files go to ``root/panoptic``.
        split (str): the split name (``panoptic_<split>.json``).
        class_names, colors: the dataset's classes and their colours.
        thing_ids (iterable[int]): thing class ids.
        min_area (int): see :func:`panoptic_ids_from_semantic`.

    Returns:
        str: the JSON's path.
    """
    thing_ids = {int(i) for i in thing_ids}
    out_dir = os.path.join(root, PANOPTIC_DIRNAME)
    os.makedirs(out_dir, exist_ok=True)
    images, annotations = [], []
    for d in dicts:
        label = read_label(d["sem_seg_file_name"], d.get("label_offset", 0))
        ids = panoptic_ids_from_semantic(label, thing_ids, min_area)
        name = str(d["image_id"]).replace(os.sep, "_")
        png = f"{name}.png"
        write_panoptic_png(os.path.join(out_dir, png), ids)
        image = {"id": d["image_id"], "file_name": png, "height": int(label.shape[0]), "width": int(label.shape[1])}
        if d.get("condition"):
            image["condition"] = d["condition"]
        images.append(image)
        annotations.append(
            {"image_id": d["image_id"], "file_name": png, "segments_info": segments_info_of(ids, lambda i: i // LABEL_DIVISOR)}
        )
    path = os.path.join(out_dir, f"panoptic_{split}.json")
    write_panoptic_json(path, images, annotations, coco_categories(class_names, colors, thing_ids))
    return path
