"""Dataset mappers, looked up by ``cfg.INPUT.DATASET_MAPPER_NAME``."""

from .rgbt_panoptic_dataset_mapper import RGBTPanopticDatasetMapper
from .rgbt_semantic_dataset_mapper import RGBTSemanticDatasetMapper, ResizeToBaseScale

__all__ = [
    "DATASET_MAPPERS",
    "RGBTPanopticDatasetMapper",
    "RGBTSemanticDatasetMapper",
    "ResizeToBaseScale",
    "build_dataset_mapper",
]

DATASET_MAPPERS = {"rgbt_semantic": RGBTSemanticDatasetMapper, "rgbt_panoptic": RGBTPanopticDatasetMapper}


def build_dataset_mapper(cfg, is_train=True):
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, built from ``cfg``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise KeyError(
            f"unknown INPUT.DATASET_MAPPER_NAME {name!r}; known: {sorted(DATASET_MAPPERS)}"
        )
    return DATASET_MAPPERS[name](cfg, is_train)
