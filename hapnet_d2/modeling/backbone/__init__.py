from .cspd import CSPD
from .duplex import DuplexBackbone
from .hapnet_backbone import INPUT_STRATEGIES, HAPNetBackbone
from .timm_vit import TimmViT
