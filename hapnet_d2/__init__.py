"""HAPNet-D2: hybrid, asymmetric RGB-thermal scene parsing (HAPNet) on Detectron2.

Importing the package registers the model components, datasets and mappers.
"""
import os
import sys
import warnings

# Detectron2 (2024-08) and fvcore decorate functions with torch.jit.script at import; torch 2.14
# deprecates it with a FutureWarning users cannot act on. Filtered precisely, before the imports.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def _detectron2_missing_message() -> str:
    """What to do when Detectron2 is not importable, with the commands for this interpreter."""
    main_file = os.path.abspath(getattr(sys.modules.get("__main__"), "__file__", "") or "")
    checkout = next((d for d in (os.path.dirname(main_file), os.path.dirname(os.path.dirname(main_file)))
                     if os.path.isfile(os.path.join(d, "dev", "install_detectron2.sh"))), "<checkout>")
    script = os.path.join(checkout, "dev", "install_detectron2.sh")
    return (f"HAPNet-D2 needs Detectron2, which `pip install` cannot bring (PyPI has no upstream "
            f"Detectron2): run `{script} {sys.executable}` (or `make install` in the checkout), or "
            f"install Detectron2 from its sources")


try:
    import detectron2  # noqa: E402,F401
except ModuleNotFoundError as e:  # not declared in setup.py (see setup.py's docstring)
    if e.name != "detectron2":
        raise
    if getattr(sys.modules.get("__main__"), "__file__", None) and not sys.flags.interactive \
            and "pytest" not in sys.modules:
        # run as a script (demo/, tools/, train_net.py): one line, no traceback
        sys.exit(f"{os.path.basename(sys.argv[0])}: {_detectron2_missing_message()}")
    raise ImportError(_detectron2_missing_message(), name="detectron2") from None

from . import data, modeling  # noqa: E402,F401  (registration)
from .config import add_hapnet_config

__all__ = ["add_hapnet_config"]
