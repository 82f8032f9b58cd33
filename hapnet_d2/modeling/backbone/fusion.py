"""Progressive heterogeneous feature integrator (PHFI): GLCA and CCG (paper Sect. 3.2.3).

Token layouts used throughout:
- ViT context ``x``: ``[B, N, D]`` patch tokens on the stride-16 grid ``(h, w)``.
- Spatial prior ``c``: ``[B, S, D]``, the stride-8, -16 and -32 maps flattened and
  concatenated (``S = h8*w8 + h16*w16 + h32*w32``); ``prior_shapes`` is ``[3, 2]`` (h, w).
"""
import math
from typing import List, Tuple

import torch
from timm.layers import DropPath
from torch import nn

from hapnet_d2.ops import MSDeformAttn

__all__ = ["GLCA", "CCG", "ConvFFN", "reference_points", "init_linear_", "init_conv_fan_out_"]


def init_linear_(linear: nn.Linear, std: float = 0.02) -> None:
    """The official adapter's Linear init: truncated normal (std ``std``, cut at +-2), bias 0."""
    nn.init.trunc_normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def init_conv_fan_out_(conv: nn.Module) -> None:
    """The official adapter's conv init: normal with std sqrt(2 / fan_out), bias 0.

    ``fan_out = kh * kw * out_channels / groups`` (He init in fan-out mode). Works for
    ``Conv2d`` and ``ConvTranspose2d`` (whose ``out_channels`` is the output width too).
    """
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def reference_points(shapes: torch.Tensor, device=None) -> torch.Tensor:
    """Normalised centres of every cell of several grids.

    Args:
        shapes: ``[L, 2]`` long, (h, w) of each grid.
    Returns:
        ``[1, sum(h*w), 1, 2]`` (x, y) in (0, 1), grids in order, row-major.
    """
    points = []
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))
    return torch.cat(points, dim=0)[None, :, None]


class GLCA(nn.Module):
    """Global-local context aggregator (the injector): prior -> ViT tokens, Eq. (1).

    ``x = x + gamma * MSDA(LN(x), LN(c))`` with ``gamma`` a learnable per-channel scale.
    """

    def __init__(self, dim: int, num_heads: int, num_points: int, ratio: float, gamma_init: float,
                 num_levels: int = 3, impl: str = "auto"):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(d_model=dim, n_levels=num_levels, n_heads=num_heads,
                                 n_points=num_points, ratio=ratio, impl=impl)
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init)))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ref: torch.Tensor, prior_shapes: torch.Tensor,
                prior_start: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``[B, N, D]`` ViT patch tokens (queries).
            c: ``[B, S, D]`` spatial prior (values).
            ref: ``[1, N, 1, 2]`` token centres.
            prior_shapes: ``[3, 2]``; prior_start: ``[3]``.
        Returns:
            ``[B, N, D]``.
        """
        ref = ref.expand(x.shape[0], -1, prior_shapes.shape[0], -1)
        out = self.attn(self.query_norm(x), ref, self.feat_norm(c), prior_shapes, prior_start)
        return x + self.gamma * out


class ConvFFN(nn.Module):
    """Linear -> 3x3 depth-wise conv per scale segment -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        # initialised as the official adapter (trained from scratch)
        init_linear_(self.fc1)
        init_linear_(self.fc2)
        init_conv_fan_out_(self.dwconv)

    def forward(self, c: torch.Tensor, shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """
        Args:
            c: ``[B, S, D]`` tokens of several grids, concatenated.
            shapes: (h, w) of each grid, ``sum(h*w) == S``.
        Returns:
            ``[B, S, D]``.
        """
        y = self.fc1(c)
        parts = []
        for part, (h, w) in zip(y.split([h * w for h, w in shapes], dim=1), shapes):
            grid = part.transpose(1, 2).reshape(y.shape[0], -1, h, w)
            parts.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.fc2(self.act(torch.cat(parts, dim=1)))


class CCG(nn.Module):
    """Complementary context generator (the extractor): ViT tokens -> prior, Eq. (2) + FFN.

    ``c = c + MSDA(LN(c), LN(x))``, then ``c = c + DropPath(ConvFFN(LN(c)))``.
    """

    def __init__(self, dim: int, num_heads: int, num_points: int, ratio: float, ffn_ratio: float,
                 drop_path: float = 0.0, impl: str = "auto"):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(d_model=dim, n_levels=1, n_heads=num_heads, n_points=num_points,
                                 ratio=ratio, impl=impl)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, c: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, vit_shape: torch.Tensor,
                prior_shapes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            c: ``[B, S, D]`` spatial prior (queries).
            x: ``[B, N, D]`` ViT patch tokens (values), one level.
            ref: ``[1, S, 1, 2]`` prior token centres.
            vit_shape: ``[1, 2]`` the ViT token grid; prior_shapes: ``[3, 2]``.
        Returns:
            ``[B, S, D]``.
        """
        ref = ref.expand(c.shape[0], -1, -1, -1)
        start = vit_shape.new_zeros(1)
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), vit_shape, start)
        return c + self.drop_path(self.ffn(self.ffn_norm(c), prior_shapes.tolist()))
