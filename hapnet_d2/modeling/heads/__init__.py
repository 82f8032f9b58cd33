"""Segmentation heads (importing registers them)."""

from .mask_former_head import HAPNetMaskFormerHead, build_pixel_decoder

__all__ = ["HAPNetMaskFormerHead", "build_pixel_decoder"]
