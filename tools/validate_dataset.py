#!/usr/bin/env python
"""Check every sample of an RGB-T dataset split before training on it.

Usage::

    python tools/validate_dataset.py --format mfnet --root datasets/MFNet [--split train]
    python tools/validate_dataset.py --format rgbx --root /data/robot --split train \
        --num-classes 5 [--x-channels 1] [--x-max 16383]

Prints the number of samples, the image sizes, the thermal bit depth and raw min/max, and
the exact label pixel count of every class. Each problem (unreadable or truncated image, missing thermal or label, size
mismatch, wrong channel count, label id outside the class range and not 255, empty split
list, listed names without files) is printed with the file it concerns; the exit code is
then 1, else 0. Without ``--split`` the format's usual splits are checked.

``--panoptic-json J [--panoptic-root D]`` (with ``--split``) also checks COCO panoptic labels
of the split: missing or unreadable PNGs, a PNG whose size differs from its image, ids in
the PNG without a segment in the JSON (and segments absent from the PNG), unknown category
ids, images of the split without an annotation; each named with its file.
"""

import argparse
import os
import sys
from collections import Counter

import numpy as np

from hapnet_d2.data.datasets import DATASET_FORMATS
from hapnet_d2.data.io import IGNORE_LABEL, RGBTDataError, ThermalScaling, ThermalStats, read_sample
from hapnet_d2.data.panoptic_format import VOID, read_panoptic_json, read_panoptic_png


def validate_split(dataset_dicts, num_classes, thermal_stats=None):
    """Read and check every sample of a split.

    Args:
        dataset_dicts (list[dict]): the split's dataset dicts.
        num_classes (int): valid label ids are 0..num_classes-1 and 255.
        thermal_stats (ThermalStats or None): if given, counts bit depth and raw range of the
            thermal images.

    Returns:
        tuple: ``(sizes, pixel_counts, problems)``: Counter of (H, W), int64 array
        ``[num_classes + 1]`` of label pixels per class (last entry: 255), and a list of
        ``(file, reason)``.
    """
    sizes, problems = Counter(), []
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for d in dataset_dicts:
        try:
            rgb, _, label = read_sample(d, ThermalScaling(warn_low_range=False), thermal_stats)
        except RGBTDataError as e:
            problems.append((e.path, e.reason))
            continue
        sizes[rgb.shape[:2]] += 1
        ids = np.bincount(label.ravel(), minlength=256)
        bad = [int(i) for i in np.flatnonzero(ids) if i >= num_classes and i != IGNORE_LABEL]
        if bad:
            problems.append(
                (
                    d["sem_seg_file_name"],
                    f"label ids {bad} outside 0..{num_classes - 1} and not {IGNORE_LABEL}",
                )
            )
            continue
        counts[:num_classes] += ids[:num_classes]
        counts[num_classes] += ids[IGNORE_LABEL]
    return sizes, counts, problems


def validate_panoptic(dataset_dicts, panoptic_json, panoptic_root):
    """Check the COCO panoptic labels of a split against its JSON and its images.

    Args:
        dataset_dicts (list[dict]): the split's (semantic) dataset dicts.
        panoptic_json (str): the split's COCO panoptic JSON.
        panoptic_root (str): folder of the panoptic PNGs.

    Returns:
        list: ``(file, reason)`` problems.
    """
    try:
        data = read_panoptic_json(panoptic_json)
    except RGBTDataError as e:
        return [(e.path, e.reason)]
    known = {c.get("id") for c in data["categories"]}
    anns = {str(a["image_id"]): a for a in data["annotations"]}
    problems = []
    for d in dataset_dicts:
        ann = anns.get(str(d["image_id"]))
        if ann is None:
            problems.append((panoptic_json, f"no annotation for image {d['image_id']!r}"))
            continue
        png = os.path.join(panoptic_root, ann["file_name"])
        try:
            ids = read_panoptic_png(png)
        except RGBTDataError as e:
            problems.append((e.path, e.reason))
            continue
        if d.get("height") is not None and ids.shape != (d["height"], d["width"]):
            problems.append((png, f"size {ids.shape[1]}x{ids.shape[0]} (WxH) differs from the "
                             f"image {d['file_name']} ({d['width']}x{d['height']})"))
            continue
        listed = {s["id"]: s for s in ann["segments_info"]}
        unknown = sorted({s["category_id"] for s in listed.values()} - known)
        if unknown:
            problems.append((panoptic_json, f"{ann['file_name']}: unknown category ids {unknown}"))
        present = {int(i) for i in np.unique(ids)} - {VOID}
        if present - set(listed):
            problems.append((png, f"segment ids {sorted(present - set(listed))} not in the JSON's "
                             "segments_info"))
        if set(listed) - present:
            problems.append((png, f"segments {sorted(set(listed) - present)} of the JSON are not "
                             "in the PNG"))
    return problems


def _load(args, split):
    loader, _, _ = DATASET_FORMATS[args.format]
    if args.format == "rgbx":
        return loader(args.root, split, thermal_channels=args.x_channels, thermal_max=args.x_max)
    return loader(args.root, split)


def _report_split(args, split, class_names):
    """Validate and print one split; returns its list of problems."""
    print(f"== {args.format} {args.root} split {split}")
    try:
        dicts = _load(args, split)
    except RGBTDataError as e:
        return [(e.path, e.reason)]
    if not dicts:
        return [(f"{args.root} ({split})", "empty split list")]
    thermal = ThermalStats()
    sizes, counts, problems = validate_split(dicts, len(class_names), thermal)
    if args.panoptic_json:
        root = args.panoptic_root or os.path.dirname(args.panoptic_json)
        problems += validate_panoptic(dicts, args.panoptic_json, root)
    print(f"samples: {len(dicts)} ({len(dicts) - len(problems)} readable)")
    for (h, w), n in sorted(sizes.items()):
        print(f"image size {w}x{h} (WxH): {n}")
    print(f"thermal: {thermal.summary()}")
    if thermal.bit_depths[16] and thermal.max is not None and thermal.max < 0.25 * 65535:
        print(f"  16-bit thermal up to {thermal.max:g} only: use INPUT.THERMAL_SCALING fixed with "
              f"INPUT.THERMAL_RANGE (min, max), or percentile, rather than full (docs/DATASETS_THERMAL.md)")
    print("label pixels per class:")
    for i, name in enumerate(class_names):
        print(f"  {i:3d} {name}: {counts[i]}")
    print(f"  {IGNORE_LABEL:3d} ignore: {counts[-1]}")
    return problems


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=sorted(DATASET_FORMATS))
    parser.add_argument("--root", required=True, help="the dataset's own folder")
    parser.add_argument("--split", help="list/split name (default: the format's usual splits)")
    parser.add_argument("--num-classes", type=int, help="rgbx only: number of classes")
    parser.add_argument("--x-channels", type=int, default=1, choices=(1, 3), help="rgbx only")
    parser.add_argument("--x-max", type=float, help="rgbx only: raw X value mapped to 255")
    parser.add_argument("--panoptic-json", help="also check this COCO panoptic JSON (one split)")
    parser.add_argument("--panoptic-root", help="its PNG folder (default: the JSON's folder)")
    args = parser.parse_args(argv)
    if args.panoptic_json and args.split is None:
        parser.error("--panoptic-json needs --split")
    if args.format == "rgbx" and (args.num_classes is None or args.split is None):
        parser.error("--format rgbx needs --num-classes and --split")
    return args


def main(argv=None):
    """Run the validator; returns the exit code (0 clean, 1 problems)."""
    args = parse_args(argv)
    _, class_names, default_splits = DATASET_FORMATS[args.format]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(args.num_classes)]
    problems = []
    for split in [args.split] if args.split else default_splits:
        problems += _report_split(args, split, class_names)
    if problems:
        print(f"PROBLEMS ({len(problems)}):")
        for path, reason in problems:
            print(f"  {path}: {reason}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
