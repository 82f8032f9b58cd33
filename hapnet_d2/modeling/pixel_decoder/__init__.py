"""Pixel decoders of the mask-classification head (importing registers them)."""

from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = ["MSDeformAttnPixelDecoder"]
