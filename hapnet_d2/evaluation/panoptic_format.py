"""Conversions between the model's panoptic output and COCO panoptic files.

The model (and Mask2Former) describes a panoptic prediction as ``(ids [H, W], segments_info)``
with *contiguous* category ids (0..K-1, the semantic class ids) and an ``isthing`` flag per
segment. COCO panoptic files store the ids as an RGB PNG (``id = R + 256 G + 256^2 B``,
0 = void) and a JSON whose ``category_id`` are the *dataset* ids of the categories (contiguous
id + 1 for the datasets of this project; the metadata's ``stuff_dataset_id_to_contiguous_id``
maps every category, ``thing_dataset_id_to_contiguous_id`` the things).
"""

import json
import os

import numpy as np
from PIL import Image

from ..data.io import RGBTDataError

__all__ = [
    "contiguous_to_dataset_ids",
    "panoptic_categories",
    "to_coco_segments",
    "read_panoptic_png",
    "write_panoptic_prediction",
    "semantic_from_panoptic",
]


def contiguous_to_dataset_ids(metadata):
    """``{contiguous id: dataset (JSON) category id}`` of every category of a panoptic dataset.

    Args:
        metadata (Metadata): with ``stuff_dataset_id_to_contiguous_id`` (all categories, the
            Mask2Former convention) and ``thing_dataset_id_to_contiguous_id``.

    Returns:
        dict[int, int]
    """
    mapping = {int(v): int(k) for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}
    for k, v in metadata.thing_dataset_id_to_contiguous_id.items():
        mapping[int(v)] = int(k)
    return mapping


def panoptic_categories(metadata):
    """The ``categories`` of a COCO panoptic JSON for a registered panoptic dataset.

    Returns:
        list[dict]: ``{"id", "name", "isthing", "color"}`` per category, in contiguous order.
    """
    to_dataset = contiguous_to_dataset_ids(metadata)
    things = set(int(v) for v in metadata.thing_dataset_id_to_contiguous_id.values())
    colors = metadata.get("stuff_colors", None) or [[0, 0, 0]] * len(metadata.stuff_classes)
    return [
        {
            "id": to_dataset[i],
            "name": name,
            "isthing": int(i in things),
            "color": [int(c) for c in colors[i]],
        }
        for i, name in enumerate(metadata.stuff_classes)
        if i in to_dataset
    ]


def to_coco_segments(ids, segments_info, metadata):
    """COCO panoptic ``segments_info`` of a model prediction (dataset category ids, area, bbox).

    Args:
        ids (np.ndarray): ``[H, W]`` segment ids, 0 = void.
        segments_info (list[dict]): ``{"id", "category_id" (contiguous), "isthing"}`` each.
        metadata (Metadata): the dataset's panoptic metadata.

    Returns:
        list[dict]: ``{"id", "category_id", "iscrowd": 0, "isthing", "area", "bbox"}``; segments
        without pixels are left out (panopticapi rejects them).
    """
    to_dataset = contiguous_to_dataset_ids(metadata)
    segments = []
    for info in segments_info:
        ys, xs = np.nonzero(ids == info["id"])
        if ys.size == 0:
            continue
        category = int(info["category_id"])
        if category not in to_dataset:
            raise ValueError(f"segment {info['id']} has unknown contiguous category {category}")
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": int(info["id"]),
                "category_id": to_dataset[category],
                "iscrowd": 0,
                "isthing": int(bool(info.get("isthing", False))),
                "area": int(ys.size),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            }
        )
    return segments


def read_panoptic_png(path):
    """Segment ids of a COCO panoptic PNG.

    Args:
        path (str): an RGB PNG (``id = R + 256 G + 256^2 B``).

    Returns:
        np.ndarray: ``[H, W]`` int64 ids.

    Raises:
        RGBTDataError: missing or unreadable file, or not a 3-channel image.
    """
    if not os.path.isfile(path):
        raise RGBTDataError(path, "panoptic PNG does not exist")
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise RGBTDataError(path, f"panoptic PNG must be RGB, got mode {image.mode}")
            rgb = np.asarray(image, dtype=np.int64)
    except (OSError, SyntaxError) as e:
        raise RGBTDataError(path, f"not a readable image ({e})") from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _ids_to_rgb(ids):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must lie in 0..{256 ** 3 - 1}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_panoptic_prediction(png_path, json_path, ids, segments_info, metadata, image_id):
    """Write one prediction in the COCO panoptic prediction format: the PNG and a JSON with
    ``annotations`` (one entry: ``image_id``, ``file_name``, ``segments_info`` with dataset
    category ids) and ``categories``.

    Args:
        png_path, json_path (str): output files.
        ids (np.ndarray): ``[H, W]`` segment ids (0 = void).
        segments_info (list[dict]): the model's segments (contiguous ``category_id``).
        metadata (Metadata): panoptic metadata of the classes the model predicts.
        image_id (str or int): the ``image_id`` written into the JSON.
    """
    ids = np.asarray(ids)
    Image.fromarray(_ids_to_rgb(ids)).save(png_path)
    payload = {
        "annotations": [
            {
                "image_id": image_id,
                "file_name": os.path.basename(png_path),
                "segments_info": to_coco_segments(ids, segments_info, metadata),
            }
        ],
        "categories": panoptic_categories(metadata),
    }
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)


def semantic_from_panoptic(ids, segments, dataset_to_contiguous, void_label):
    """Class map of a COCO panoptic prediction.

    Args:
        ids (np.ndarray): ``[H, W]`` segment ids.
        segments (list[dict]): COCO ``segments_info`` (dataset ``category_id``).
        dataset_to_contiguous (dict[int, int]): dataset id -> contiguous class id.
        void_label (int): class given to void pixels (id 0 or unlisted).

    Returns:
        np.ndarray: ``[H, W]`` int64 class ids.
    """
    lut = {int(s["id"]): dataset_to_contiguous[int(s["category_id"])] for s in segments}
    semantic = np.full(ids.shape, void_label, dtype=np.int64)
    for segment_id, category in lut.items():
        semantic[ids == segment_id] = category
    return semantic
