"""HAPNet-D2: hybrid, asymmetric RGB-thermal scene parsing (HAPNet) on Detectron2.

Importing the package registers the model components, datasets and mappers.
"""
import warnings

# Detectron2 (2024-08) and fvcore decorate functions with torch.jit.script at import; torch 2.14
# deprecates it with a FutureWarning users cannot act on. Filtered precisely, before the imports.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

try:
    import detectron2  # noqa: E402,F401
except ModuleNotFoundError:  # not declared in setup.py (PyPI has no upstream Detectron2 for 3.11+)
    raise ImportError(
        "hapnet_d2 needs Detectron2, which `pip install` cannot bring: run dev/install_detectron2.sh "
        "PYTHON from a HAPNet-D2 checkout (or `make install`), or install Detectron2 from its sources"
    ) from None

from . import data, modeling  # noqa: E402,F401  (registration)
from .config import add_hapnet_config

__all__ = ["add_hapnet_config"]
