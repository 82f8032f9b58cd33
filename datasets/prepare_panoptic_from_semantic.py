#!/usr/bin/env python
"""Convert the semantic labels of an RGB-T dataset to COCO panoptic ground truth.

No public RGB-thermal dataset has panoptic labels, so this is an APPROXIMATION: every
8-connected component of a thing class becomes one instance. Touching objects of one class
(people side by side, a row of parked cars) merge into one instance, and an object cut in two by
an occluder becomes two. Components smaller than --min-area pixels become void (not scored by
PQ). Each stuff class present is one segment; ignored pixels (255) are void; nothing is crowd.

Writes ROOT/panoptic/NAME.png (id = R + 256 G + 256^2 B) and ROOT/panoptic/panoptic_SPLIT.json;
the next run of HAPNet-D2 registers them as <dataset>_panoptic_<split> (e.g.
mfnet_rgbt_panoptic_test), the datasets of configs/<ds>/panoptic/.

Examples:
    python datasets/prepare_panoptic_from_semantic.py --format mfnet            # $DETECTRON2_DATASETS/MFNet
    python datasets/prepare_panoptic_from_semantic.py --format kp --min-area 32
    python datasets/prepare_panoptic_from_semantic.py --format rgbx --root /data/robot --split train \\
        --class-names ground person car --thing-classes person car
"""

import argparse
import os
import sys

import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.utils.colormap import colormap

from hapnet_d2.data.datasets import DATASET_FORMATS, KP_SPLITS, MFNET_SPLITS, PST900_SPLITS
from hapnet_d2.data.datasets.register_kp import KP_COLORS
from hapnet_d2.data.datasets.register_mfnet import MFNET_COLORS
from hapnet_d2.data.datasets.register_pst900 import PST900_COLORS
from hapnet_d2.data.io import RGBTDataError
from hapnet_d2.data.panoptic_from_semantic import DEFAULT_THING_CLASSES, convert_split

# format -> (folder under $DETECTRON2_DATASETS, splits, colours)
_FORMATS = {
    "mfnet": ("MFNet", MFNET_SPLITS, MFNET_COLORS),
    "kp": ("KP", KP_SPLITS, KP_COLORS),
    "pst900": ("PST900", PST900_SPLITS, PST900_COLORS),
}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=["mfnet", "kp", "pst900", "rgbx"])
    parser.add_argument("--root", help="the dataset folder (default: $DETECTRON2_DATASETS/<MFNet|KP|PST900>)")
    parser.add_argument("--split", nargs="+", help="splits to convert (default: all of the format)")
    parser.add_argument("--min-area", type=int, default=16,
                        help="thing components with fewer pixels become void (default 16)")
    parser.add_argument("--thing-classes", nargs="+",
                        help="class names that are things (default: the format's countable classes)")
    parser.add_argument("--class-names", nargs="+", help="rgbx: all class names, index = label id")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.min_area < 1:
        parser.error("--min-area must be at least 1")
    loader, class_names, _ = DATASET_FORMATS[args.format]
    if args.format == "rgbx":
        if not (args.root and args.split and args.class_names and args.thing_classes):
            parser.error("--format rgbx needs --root, --split, --class-names and --thing-classes")
        class_names, splits = args.class_names, args.split
        colors = colormap(rgb=True, maximum=255)[: len(class_names)].astype(int).tolist()
        root = args.root
    else:
        folder, splits, colors = _FORMATS[args.format]
        root = args.root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), folder)
        splits = args.split or splits
    things = args.thing_classes or DEFAULT_THING_CLASSES[args.format]
    unknown = [t for t in things if t not in class_names]
    if unknown:
        parser.error(f"--thing-classes {unknown} are not classes of {args.format}: {list(class_names)}")
    thing_ids = [class_names.index(t) for t in things]
    try:
        for split in splits:
            dicts = loader(root, split)
            path = convert_split(dicts, root, split, class_names, colors, thing_ids, args.min_area)
            print(f"{split}: {len(dicts)} images -> {path}")
    except RGBTDataError as e:
        sys.exit(f"prepare_panoptic_from_semantic: {e}")
    print(f"things: {', '.join(things)}; registered on the next run as <dataset>_panoptic_<split>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
