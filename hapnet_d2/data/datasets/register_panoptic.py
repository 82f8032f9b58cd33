"""Panoptic RGB-T datasets: a COCO panoptic JSON + PNGs on top of RGB-T samples.

A panoptic split's dataset dicts are the RGB-T dicts of its images (``file_name``,
``thermal_file_name``, ``rgbt_layout``, ``condition``, ...) plus Detectron2's panoptic keys:
``pan_seg_file_name`` (the PNG, ``id = R + 256 G + 256^2 B``, 0 = void) and ``segments_info``
(``id``, ``category_id`` as a *contiguous* class id, ``iscrowd``, ``area``, ``bbox``,
``isthing``). The metadata carries Detectron2's panoptic keys (``thing_classes``,
``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id`` (every category,
Mask2Former's convention), ``label_divisor``, ``panoptic_root``, ``panoptic_json``) and
``evaluator_type="rgbt_panoptic"``, so Detectron2's and panopticapi's tools work on it.

Users' own data: :func:`register_rgbx_panoptic_dataset` (COCO panoptic JSON + PNG folder +
RGB folder + X folder).
"""

import os

from ..io import RGBTDataError
from ..panoptic_format import LABEL_DIVISOR, read_panoptic_json
from .common import IMAGE_EXTENSIONS, find_image, register_rgbt_split, strip_extension

__all__ = [
    "merge_panoptic_annotations",
    "register_converted_panoptic",
    "register_rgbt_panoptic_split",
    "register_rgbx_panoptic_dataset",
]


def category_maps(categories):
    """Contiguous ids of a JSON's categories (their order in the JSON).

    Returns:
        tuple: ``(thing_dataset_id_to_contiguous_id, stuff_dataset_id_to_contiguous_id)``; the
        second maps every category, things included.
    """
    all_ids = {c["id"]: i for i, c in enumerate(categories)}
    things = {c["id"]: all_ids[c["id"]] for c in categories if c.get("isthing")}
    return things, all_ids


def merge_panoptic_annotations(dicts, panoptic_json, panoptic_root):
    """Add ``pan_seg_file_name`` and ``segments_info`` to RGB-T dataset dicts.

    Args:
        dicts (list[dict]): RGB-T dicts with ``image_id``.
        panoptic_json (str): COCO panoptic JSON with an annotation for every dict's ``image_id``.
        panoptic_root (str): folder of the annotation PNGs.

    Returns:
        list[dict]: the same dicts, extended (category ids made contiguous, ``isthing`` added).

    Raises:
        RGBTDataError: an image without annotation, or a segment of an unknown category.
    """
    data = read_panoptic_json(panoptic_json)
    things, contiguous = category_maps(data["categories"])
    annotations = {str(a["image_id"]): a for a in data["annotations"]}
    for d in dicts:
        ann = annotations.get(str(d["image_id"]))
        if ann is None:
            raise RGBTDataError(panoptic_json, f"no annotation for image {d['image_id']!r}")
        segments = []
        for seg in ann["segments_info"]:
            if seg["category_id"] not in contiguous:
                raise RGBTDataError(
                    panoptic_json,
                    f"image {d['image_id']!r}: segment {seg['id']} has category {seg['category_id']}, "
                    f"not one of the JSON's categories",
                )
            segments.append(
                dict(seg, category_id=contiguous[seg["category_id"]], isthing=seg["category_id"] in things)
            )
        d["pan_seg_file_name"] = os.path.join(panoptic_root, ann["file_name"])
        d["segments_info"] = segments
    return dicts


def register_rgbt_panoptic_split(
    name, load_rgbt_dicts, *, panoptic_json, panoptic_root, categories, prepare=None, **metadata
):
    """Register one lazily loaded panoptic RGB-T split.

    Args:
        name (str): catalog name, e.g. ``"synth_rgbt_panoptic_test"``.
        load_rgbt_dicts (callable): no-argument function returning the split's RGB-T dicts.
        panoptic_json (str): the COCO panoptic JSON of exactly this split.
        panoptic_root (str): folder of its PNGs.
        categories (list[dict]): the JSON's ``categories`` (``id``, ``name``, ``isthing``,
            ``color``), in contiguous-id order.
        prepare (callable or None): run on first use, before reading (e.g. generation).
        metadata: further metadata (``has_day_night``, ``image_root``, ``sem_seg_root``, ...).
    """
    things, contiguous = category_maps(categories)

    def load():
        if prepare is not None:
            prepare()
        return merge_panoptic_annotations(load_rgbt_dicts(), panoptic_json, panoptic_root)

    thing_cats = [c for c in categories if c.get("isthing")]
    register_rgbt_split(
        name,
        load,
        stuff_classes=[c["name"] for c in categories],
        stuff_colors=[list(c["color"]) for c in categories],
        evaluator_type="rgbt_panoptic",
        thing_classes=[c["name"] for c in thing_cats],
        thing_colors=[list(c["color"]) for c in thing_cats],
        thing_dataset_id_to_contiguous_id=things,
        stuff_dataset_id_to_contiguous_id=contiguous,
        label_divisor=LABEL_DIVISOR,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        **metadata,
    )


def register_rgbx_panoptic_dataset(
    name, panoptic_json, panoptic_root, rgb_root, x_root, *, thermal_channels=1, thermal_max=None
):
    """Register users' own RGB-X panoptic data.

    Layout: a COCO panoptic JSON (``images`` with ``id`` and ``file_name``; ``annotations``;
    ``categories`` with ``isthing`` and ``color``), its PNG folder, and two image folders in
    which each image's RGB and X files have the stem of the JSON's image ``file_name`` (any
    extension of :data:`IMAGE_EXTENSIONS`). An image entry may carry ``"condition": "day"`` or
    ``"night"`` (then day/night subsets are evaluated). Semantic labels are derived from the
    panoptic PNGs (void -> 255), so no label folder is needed.

    Example::

        register_rgbx_panoptic_dataset("robot_pan_val", "/data/robot/panoptic_val.json",
                                       "/data/robot/panoptic_val", "/data/robot/rgb", "/data/robot/x")
    """
    data = read_panoptic_json(panoptic_json)
    images = data.get("images") or []
    if not images:
        raise RGBTDataError(panoptic_json, "an RGB-X panoptic JSON needs an 'images' list")
    has_day_night = all(im.get("condition") in ("day", "night") for im in images)

    def load():
        dicts = []
        for im in images:
            stem = strip_extension(im["file_name"])
            dicts.append(
                {
                    "file_name": find_image(rgb_root, stem, IMAGE_EXTENSIONS),
                    "thermal_file_name": find_image(x_root, stem, IMAGE_EXTENSIONS),
                    "height": im.get("height"),
                    "width": im.get("width"),
                    "image_id": im["id"],
                    "condition": im.get("condition"),
                    "rgbt_layout": "separate",
                    "thermal_channels": thermal_channels,
                    "thermal_max": thermal_max,
                }
            )
        return dicts

    register_rgbt_panoptic_split(
        name,
        load,
        panoptic_json=panoptic_json,
        panoptic_root=panoptic_root,
        categories=data["categories"],
        has_day_night=has_day_night,
        image_root=rgb_root,
    )


def register_converted_panoptic(prefix, root, splits, load_split, has_day_night, **metadata):
    """Register ``<prefix>_panoptic_<split>`` for every split whose converted panoptic JSON
    (``datasets/prepare_panoptic_from_semantic.py``: ``root/panoptic/panoptic_<split>.json``)
    exists, e.g. ``mfnet_rgbt_panoptic_test``. Categories (and so which classes are things) come
    from the JSON.

    Args:
        prefix (str): the semantic datasets' name prefix, e.g. ``"mfnet_rgbt"``.
        root (str): the dataset folder.
        splits (list[str]): candidate splits.
        load_split (callable): ``load_split(root, split)`` -> RGB-T dataset dicts.
        has_day_night (bool): whether the dicts carry a day/night ``condition``.
    """
    pan_root = os.path.join(root, "panoptic")
    for split in splits:
        path = os.path.join(pan_root, f"panoptic_{split}.json")
        if not os.path.isfile(path):
            continue
        register_rgbt_panoptic_split(
            f"{prefix}_panoptic_{split}",
            lambda split=split: load_split(root, split),
            panoptic_json=path,
            panoptic_root=pan_root,
            categories=read_panoptic_json(path)["categories"],
            has_day_night=has_day_night,
            **metadata,
        )
