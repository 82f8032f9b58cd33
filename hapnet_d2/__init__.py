"""HAPNet-D2: hybrid, asymmetric RGB-thermal scene parsing (HAPNet) on Detectron2.

Importing the package registers the model components, datasets and mappers.
"""
from . import data, modeling  # noqa: F401  (registration)
from .config import add_hapnet_config

__all__ = ["add_hapnet_config"]
