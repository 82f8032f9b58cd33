"""The built-in synthetic RGB-T street dataset (``hapnet_d2.data.synth``), MFNet layout.

Registered as ``synth_rgbt_{train,val,test,test_day,test_night}`` from
``$DETECTRON2_DATASETS/synth_rgbt``, and with panoptic ground truth (COCO panoptic format, exact:
the generator knows every object it draws) as ``synth_rgbt_panoptic_{...}``. If the files are missing when a split is first loaded
(``DatasetCatalog.get``), the dataset is generated there with the default parameters
(about 15 s on one core); concurrent processes are safe (generation into a temporary folder,
then an atomic rename).
"""

import os

from ..synth import SynthSpec, ensure_synth_dataset
from ..synth.objects import THING_CLASSES
from ..synth.panoptic import PANOPTIC_DIRNAME, ensure_synth_panoptic, panoptic_json_path
from ..panoptic_format import coco_categories
from .register_mfnet import MFNET_CLASSES, MFNET_COLORS, MFNET_SPLITS, load_mfnet_split, register_mfnet_dataset
from .register_panoptic import register_rgbt_panoptic_split

__all__ = ["SYNTH_DIRNAME", "register_synth_dataset", "register_synth_panoptic_dataset", "register_all_synth"]

SYNTH_DIRNAME = "synth_rgbt"


def register_synth_dataset(name, root, split, spec=SynthSpec()):
    """Register one split of a synthetic dataset, generated on first use if missing.

    Args:
        name (str): catalog name, e.g. ``"synth_rgbt_train"``.
        root (str): the synthetic dataset folder (MFNet layout).
        split (str): list name without ``.txt``.
        spec (SynthSpec): generation parameters used if ``root`` holds no dataset yet.
    """
    register_mfnet_dataset(name, root, split, prepare=lambda r: ensure_synth_dataset(r, spec))


def register_synth_panoptic_dataset(name, root, split, spec=SynthSpec()):
    """Register one split of a synthetic dataset with its panoptic ground truth (things: car,
    person, bike, color_cone; the other classes stuff), both generated on first use if missing.

    Args: as :func:`register_synth_dataset`.
    """

    def prepare():
        ensure_synth_dataset(root, spec)
        ensure_synth_panoptic(root)

    register_rgbt_panoptic_split(
        name,
        lambda: load_mfnet_split(root, split),
        panoptic_json=panoptic_json_path(root, split),
        panoptic_root=os.path.join(root, PANOPTIC_DIRNAME),
        categories=coco_categories(MFNET_CLASSES, MFNET_COLORS, THING_CLASSES),
        prepare=prepare,
        has_day_night=True,
        image_root=os.path.join(root, "images"),
        sem_seg_root=os.path.join(root, "labels"),
        split_file=os.path.join(root, f"{split}.txt"),
    )


def register_all_synth(root, spec=SynthSpec()):
    """Register ``synth_rgbt_{train,val,test,test_day,test_night}`` from ``root/synth_rgbt``.

    Args:
        root (str): the datasets folder (``$DETECTRON2_DATASETS``).
        spec (SynthSpec): generation parameters used if the dataset has to be generated.
    """
    for split in MFNET_SPLITS:
        register_synth_dataset(
            f"synth_rgbt_{split}", os.path.join(root, SYNTH_DIRNAME), split, spec
        )
        register_synth_panoptic_dataset(
            f"synth_rgbt_panoptic_{split}", os.path.join(root, SYNTH_DIRNAME), split, spec
        )
