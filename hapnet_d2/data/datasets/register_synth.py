"""The built-in synthetic RGB-T street dataset (``hapnet_d2.data.synth``), MFNet layout.

Registered as ``synth_rgbt_{train,val,test,test_day,test_night}`` from
``$DETECTRON2_DATASETS/synth_rgbt``. If the files are missing when a split is first loaded
(``DatasetCatalog.get``), the dataset is generated there with the default parameters
(about 15 s on one core); concurrent processes are safe (generation into a temporary folder,
then an atomic rename).
"""

import os

from ..synth import SynthSpec, ensure_synth_dataset
from .register_mfnet import MFNET_SPLITS, register_mfnet_dataset

__all__ = ["SYNTH_DIRNAME", "register_synth_dataset", "register_all_synth"]

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
