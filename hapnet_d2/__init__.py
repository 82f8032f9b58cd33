"""HAPNet-D2: hybrid, asymmetric RGB-thermal scene parsing (HAPNet) on Detectron2.

Importing the package registers the model components, datasets and mappers.
"""
import warnings

# Detectron2 (2024-08) and fvcore decorate functions with torch.jit.script at import; torch 2.14
# deprecates it with a FutureWarning users cannot act on. Filtered precisely, before the imports.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import data, modeling  # noqa: E402,F401  (registration)
from .config import add_hapnet_config

__all__ = ["add_hapnet_config"]
