"""Normalised 2-D sine position encoding (DETR style) of the pixel and transformer decoders."""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of the (y, x) pixel position of every location of a feature map.

    Positions are normalised to ``(0, scale]`` by the map size, so the encoding of a location
    depends on its relative position only (the same for every input resolution). The first
    ``num_pos_feats`` channels encode y, the last ``num_pos_feats`` encode x; within each half
    channels alternate sin, cos over geometrically spaced frequencies.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = None):
        """
        Args:
            num_pos_feats: channels per axis (the output has ``2 * num_pos_feats`` channels); even.
            temperature: base of the geometric frequency progression.
            scale: length the normalised coordinates span; ``2 * pi`` when None.
        """
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(
                f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}"
            )
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map [B, C, H, W]; only its shape, device and dtype are used.

        Returns:
            position encoding [B, 2 * num_pos_feats, H, W] of dtype ``x.dtype``.
        """
        batch, _, height, width = x.shape
        eps = 1e-6
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=x.device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=x.device)
        y_embed = y_embed / (height + eps) * self.scale
        x_embed = x_embed / (width + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )

        pos_y = self._interleave_sin_cos(y_embed[:, None] / dim_t)  # [H, F]
        pos_x = self._interleave_sin_cos(x_embed[:, None] / dim_t)  # [W, F]
        pos = torch.cat(
            (
                pos_y[:, None, :].expand(height, width, -1),
                pos_x[None, :, :].expand(height, width, -1),
            ),
            dim=-1,
        )  # [H, W, 2F]
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1).to(x.dtype)

    @staticmethod
    def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
        """[N, F] angles -> [N, F] with sin of the even and cos of the odd channels, interleaved."""
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)
