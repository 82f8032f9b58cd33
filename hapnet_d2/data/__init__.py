"""RGB-T data: dataset registration (on import), readers, mappers."""

from . import datasets  # noqa: F401  registers the datasets
from .dataset_mappers import RGBTSemanticDatasetMapper, ResizeToBaseScale, build_dataset_mapper
from .io import RGBTDataError, read_label, read_rgbt, read_sample

__all__ = [
    "RGBTDataError",
    "RGBTSemanticDatasetMapper",
    "ResizeToBaseScale",
    "build_dataset_mapper",
    "read_label",
    "read_rgbt",
    "read_sample",
]
