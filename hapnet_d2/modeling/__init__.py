"""Model components; importing this registers them in Detectron2's registries."""
from . import heads, pixel_decoder, transformer_decoder  # noqa: F401  (registration)
from .backbone import HAPNetBackbone
from .meta_arch import HAPNet
