"""The COCO panoptic format, as used by every panoptic dataset of HAPNet-D2.

A panoptic annotation is a PNG per image whose RGB encodes a segment id
``id = R + 256 * G + 256**2 * B`` (0 = void), and a JSON with ``images``, ``annotations``
(``image_id``, ``file_name`` of the PNG, ``segments_info`` of ``id``, ``category_id``,
``iscrowd``, ``area``, ``bbox`` ``[x, y, w, h]``) and ``categories`` (``id``, ``name``,
``isthing``, ``color``).

HAPNet-D2's conventions: the JSON category id is the contiguous class id + 1 (COCO ids start
at 1), and the segments it writes get the id ``(class id + 1) * 1000 + k`` with ``k = 0`` for
the one segment of a stuff class and ``k = 1, 2, ...`` for the instances of a thing class
(any unique non-zero ids are valid; these make a PNG readable by eye).
"""

import json
import os

import cv2
import numpy as np

from .io import IGNORE_LABEL, RGBTDataError, read_image_array

__all__ = [
    "LABEL_DIVISOR",
    "VOID",
    "rgb2id",
    "id2rgb",
    "read_panoptic_png",
    "write_panoptic_png",
    "segments_info_of",
    "coco_categories",
    "panoptic_metadata",
    "semantic_from_panoptic",
    "write_panoptic_json",
    "read_panoptic_json",
]

LABEL_DIVISOR = 1000
VOID = 0


def rgb2id(rgb):
    """Segment ids of a COCO panoptic image.

    Args:
        rgb (np.ndarray): uint8 ``HxWx3`` in R, G, B order.

    Returns:
        np.ndarray: int32 ``HxW``, ``R + 256 G + 256^2 B``.
    """
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids):
    """Inverse of :func:`rgb2id`: int ``HxW`` ids (0 .. 2^24 - 1) -> uint8 ``HxWx3`` RGB."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("panoptic segment ids must lie in 0 .. 2^24 - 1")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path):
    """Segment ids of a COCO panoptic PNG.

    Returns:
        np.ndarray: int32 ``HxW`` (0 = void).

    Raises:
        RGBTDataError: missing, unreadable, or not an 8-bit 3-channel image.
    """
    arr = read_image_array(path)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        raise RGBTDataError(
            path, f"expected an 8-bit 3-channel (RGB) panoptic PNG, got {channels} channel(s)"
        )
    return rgb2id(arr)


def write_panoptic_png(path, ids):
    """Write int ``HxW`` segment ids as a COCO panoptic PNG (RGB-encoded)."""
    if not cv2.imwrite(path, id2rgb(ids)[..., ::-1]):  # OpenCV writes B, G, R
        raise OSError(f"{path}: could not write the panoptic PNG")


def segments_info_of(ids, category_of):
    """The ``segments_info`` of an id map, in increasing id order (void left out).

    Args:
        ids (np.ndarray): int ``HxW`` segment ids, 0 = void.
        category_of (callable): segment id -> JSON category id.

    Returns:
        list[dict]: ``{"id", "category_id", "iscrowd": 0, "area", "bbox": [x, y, w, h]}``
        (plain ints; the box spans the segment's pixels inclusively).
    """
    segments = []
    for seg_id in np.unique(ids):
        if seg_id == VOID:
            continue
        mask = ids == seg_id
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y, x = int(rows[0]), int(cols[0])
        segments.append(
            {
                "id": int(seg_id),
                "category_id": int(category_of(int(seg_id))),
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": [x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1],
            }
        )
    return segments


def coco_categories(class_names, colors, thing_ids):
    """The JSON ``categories``: id = contiguous class id + 1.

    Args:
        class_names (list[str]): all K class names (index = class id).
        colors (list[list[int]]): RGB colour per class.
        thing_ids (iterable[int]): contiguous ids of the thing classes.
    """
    things = set(thing_ids)
    return [
        {"id": i + 1, "name": name, "isthing": int(i in things), "color": [int(c) for c in color]}
        for i, (name, color) in enumerate(zip(class_names, colors))
    ]


def panoptic_metadata(class_names, colors, thing_ids):
    """Detectron2's panoptic metadata keys for classes whose JSON id is class id + 1.

    Returns:
        dict: ``thing_classes``, ``thing_colors`` (contiguous-id order),
        ``thing_dataset_id_to_contiguous_id`` (things), ``stuff_dataset_id_to_contiguous_id``
        (every class, Mask2Former's convention) and ``label_divisor``.
    """
    things = sorted(set(thing_ids))
    return {
        "thing_classes": [class_names[i] for i in things],
        "thing_colors": [list(colors[i]) for i in things],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in things},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(class_names))},
        "label_divisor": LABEL_DIVISOR,
    }


def semantic_from_panoptic(ids, segments_info):
    """Class map of a panoptic id map.

    Args:
        ids (np.ndarray): int ``HxW`` segment ids.
        segments_info (list[dict]): with ``id`` and a contiguous ``category_id``.

    Returns:
        np.ndarray: uint8 ``HxW`` class ids; void and unknown ids are 255.
    """
    label = np.full(ids.shape, IGNORE_LABEL, np.uint8)
    for seg in segments_info:
        label[ids == seg["id"]] = seg["category_id"]
    return label


def write_panoptic_json(path, images, annotations, categories):
    """Write a COCO panoptic JSON (deterministic bytes for the same content)."""
    data = {"images": images, "annotations": annotations, "categories": categories}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_panoptic_json(path):
    """Load a COCO panoptic JSON, checking its top-level structure.

    Returns:
        dict: with ``annotations`` and ``categories`` (``images`` optional).

    Raises:
        RGBTDataError: missing, not JSON, or without ``annotations``/``categories`` lists.
    """
    if not os.path.isfile(path):
        raise RGBTDataError(path, "panoptic JSON does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise RGBTDataError(path, f"not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise RGBTDataError(path, "a COCO panoptic JSON must hold an object")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise RGBTDataError(path, f"COCO panoptic JSON without an {key!r} list")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"image_id", "file_name", "segments_info"} <= set(ann):
            raise RGBTDataError(
                path, "every annotation needs 'image_id', 'file_name' and 'segments_info'"
            )
    return data
