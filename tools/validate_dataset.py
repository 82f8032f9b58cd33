#!/usr/bin/env python
"""Check every sample of an RGB-T dataset split before training on it.

Usage::

    python tools/validate_dataset.py --format mfnet --root datasets/MFNet [--split train]
    python tools/validate_dataset.py --format rgbx --root /data/robot --split train \
        --num-classes 5 [--x-channels 1] [--x-max 16383]

Prints the number of samples, the image sizes and the exact label pixel count of every
class. Each problem (unreadable or truncated image, missing thermal or label, size
mismatch, wrong channel count, label id outside the class range and not 255, empty split
list, listed names without files) is printed with the file it concerns; the exit code is
then 1, else 0. Without ``--split`` the format's usual splits are checked.
"""

import argparse
import sys
from collections import Counter

import numpy as np

from hapnet_d2.data.datasets import DATASET_FORMATS
from hapnet_d2.data.io import IGNORE_LABEL, RGBTDataError, read_sample


def validate_split(dataset_dicts, num_classes):
    """Read and check every sample of a split.

    Args:
        dataset_dicts (list[dict]): the split's dataset dicts.
        num_classes (int): valid label ids are 0..num_classes-1 and 255.

    Returns:
        tuple: ``(sizes, pixel_counts, problems)``: Counter of (H, W), int64 array
        ``[num_classes + 1]`` of label pixels per class (last entry: 255), and a list of
        ``(file, reason)``.
    """
    sizes, problems = Counter(), []
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for d in dataset_dicts:
        try:
            rgb, _, label = read_sample(d)
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
    sizes, counts, problems = validate_split(dicts, len(class_names))
    print(f"samples: {len(dicts)} ({len(dicts) - len(problems)} readable)")
    for (h, w), n in sorted(sizes.items()):
        print(f"image size {w}x{h} (WxH): {n}")
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
    args = parser.parse_args(argv)
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
