"""Dataset registration. Importing this package registers every public RGB-T dataset.

The root is ``$DETECTRON2_DATASETS`` (default ``./datasets``); registration is lazy, so the
import works without any dataset on disk. See ``datasets/README.md`` for the layouts.
"""

import os

from .register_kp import KP_CLASSES, KP_SPLITS, load_kp_split, register_all_kp
from .register_mfnet import (
    MFNET_CLASSES,
    MFNET_COLORS,
    MFNET_SPLITS,
    load_mfnet_split,
    register_all_mfnet,
    register_mfnet_dataset,
)
from .register_panoptic import (
    register_converted_panoptic,
    register_rgbt_panoptic_split,
    register_rgbx_panoptic_dataset,
)
from .register_nyuv2 import NYU40_CLASSES, NYU_SPLITS, load_nyuv2_split, register_all_nyuv2
from .register_pst900 import PST900_CLASSES, PST900_SPLITS, load_pst900_split, register_all_pst900
from .register_rgbx import load_rgbx_split, register_rgbx_dataset
from .register_synth import register_all_synth

__all__ = [
    "DATASET_FORMATS",
    "KP_CLASSES",
    "KP_SPLITS",
    "MFNET_CLASSES",
    "MFNET_COLORS",
    "MFNET_SPLITS",
    "NYU40_CLASSES",
    "PST900_CLASSES",
    "load_kp_split",
    "load_mfnet_split",
    "load_nyuv2_split",
    "load_pst900_split",
    "load_rgbx_split",
    "register_all",
    "register_mfnet_dataset",
    "register_rgbx_dataset",
    "register_rgbt_panoptic_split",
    "register_rgbx_panoptic_dataset",
]

# per layout format: (loader(root, split), class names, splits checked by default)
DATASET_FORMATS = {
    "mfnet": (load_mfnet_split, MFNET_CLASSES, ["train", "val", "test"]),
    "pst900": (load_pst900_split, PST900_CLASSES, PST900_SPLITS),
    "kp": (load_kp_split, KP_CLASSES, ["train", "val", "test"]),
    "nyu": (load_nyuv2_split, NYU40_CLASSES, NYU_SPLITS),
    "rgbx": (load_rgbx_split, None, []),
}


# datasets whose semantic labels datasets/prepare_panoptic_from_semantic.py converts:
# format -> (folder under the datasets root, name prefix, splits, has day/night)
PANOPTIC_FROM_SEMANTIC = {
    "mfnet": ("MFNet", "mfnet_rgbt", MFNET_SPLITS, True),
    "kp": ("KP", "kp_rgbt", KP_SPLITS, True),
    "pst900": ("PST900", "pst900_rgbt", PST900_SPLITS, False),
}


def register_all(root):
    """Register MFNet, PST900, KP Day-Night and NYU-Depth V2 under ``root``, and the panoptic
    versions (``<name>_panoptic_<split>``) of those converted to panoptic labels."""
    register_all_mfnet(root)
    register_all_pst900(root)
    register_all_kp(root)
    register_all_nyuv2(root)
    for fmt, (folder, prefix, splits, has_day_night) in PANOPTIC_FROM_SEMANTIC.items():
        register_converted_panoptic(prefix, os.path.join(root, folder), splits, DATASET_FORMATS[fmt][0], has_day_night)


register_all(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_synth(os.getenv("DETECTRON2_DATASETS", "datasets"))  # generated on first use
