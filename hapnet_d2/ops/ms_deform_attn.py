"""Multi-scale deformable attention module (Deformable DETR, Zhu et al., ICLR 2021)."""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .ms_deform_attn_func import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Every query predicts, per head, ``n_points`` sampling offsets around its reference point on
    each of ``n_levels`` feature maps, and the attention weights of those samples (softmax over
    levels and points). Used by HAPNet's GLCA injector and CCG extractor (value/output width
    ``d_model * ratio``) and by the Mask2Former pixel decoder.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        ratio: float = 1.0,
        impl: str = "auto",
    ):
        """
        Args:
            d_model (int): channels of the queries, of the input features and of the output.
            n_levels (int): number of feature levels L.
            n_heads (int): number of attention heads M.
            n_points (int): sampling points P per head and level.
            ratio (float): width of the value/output projections relative to ``d_model``;
                ``int(d_model * ratio)`` must be divisible by ``n_heads``.
            impl (str): "auto", "kernel" or "pytorch", see :func:`ms_deform_attn`.
        """
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim <= 0 or value_dim % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: value width int(d_model * ratio) = int({d_model} * {ratio}) = "
                f"{value_dim} must be a positive multiple of n_heads={n_heads}"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR initialisation.

        Sampling offsets start on a radial grid: head h looks in direction 2*pi*h/M (scaled so
        the larger of |cos|, |sin| is 1), point p at distance p+1 (in pixels of each level).
        Attention logits start at zero (uniform weights); projections are Xavier-uniform.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2]
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scales = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # [P]
        grid = directions[:, None, None, :] * scales[None, None, :, None]  # [M, 1, P, 2]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _check_inputs(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_padding_mask: Optional[Tensor],
    ) -> None:
        """Raise a ValueError naming the argument whose shape does not fit the module."""
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"MSDeformAttn: query must be [N, Lq, {self.d_model}], got {tuple(query.shape)}"
            )
        n, lq, _ = query.shape
        if input_flatten.dim() != 3 or input_flatten.shape[::2] != (n, self.d_model):
            raise ValueError(
                f"MSDeformAttn: input_flatten must be [N={n}, S, {self.d_model}], got "
                f"{tuple(input_flatten.shape)}"
            )
        if tuple(input_spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(
                f"MSDeformAttn: input_spatial_shapes must be [n_levels={self.n_levels}, 2], got "
                f"{tuple(input_spatial_shapes.shape)}"
            )
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, lq, self.n_levels):
            raise ValueError(
                f"MSDeformAttn: reference_points must be [N={n}, Lq={lq}, L={self.n_levels}, 2 "
                f"or 4], got {tuple(reference_points.shape)}"
            )
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                f"MSDeformAttn: reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got "
                f"{tuple(reference_points.shape)}"
            )
        if input_padding_mask is not None and (
            input_padding_mask.dtype != torch.bool
            or input_padding_mask.shape != input_flatten.shape[:2]
        ):
            raise ValueError(
                f"MSDeformAttn: input_padding_mask must be a bool [N, S] = "
                f"{tuple(input_flatten.shape[:2])} tensor, got {input_padding_mask.dtype} "
                f"{tuple(input_padding_mask.shape)}"
            )

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: [N, Lq, C] queries, C = d_model.
            reference_points: [N, Lq, L, 2] (x, y) normalised to [0, 1] (top-left corner (0, 0),
                bottom-right (1, 1)), or [N, Lq, L, 4] boxes (cx, cy, w, h) in that frame.
            input_flatten: [N, S, C] features of all levels, flattened and concatenated.
            input_spatial_shapes: [L, 2] int64 (H, W) of each level, sum(H*W) = S.
            input_level_start_index: [L] int64 offset of each level in S.
            input_padding_mask: [N, S] bool, True at padding (those values are zeroed), or None.

        Returns:
            Tensor: [N, Lq, C].
        """
        self._check_inputs(
            query, reference_points, input_flatten, input_spatial_shapes, input_padding_mask
        )
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        shape = (n, lq, self.n_heads, self.n_levels, self.n_points)

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, -1)

        # Offsets and weights are kept in at least float32 even under autocast.
        offsets = self.sampling_offsets(query).view(*shape, 2)
        offsets = offsets.to(torch.promote_types(offsets.dtype, torch.float32))
        logits = self.attention_weights(query).view(n, lq, self.n_heads, -1)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        weights = logits.softmax(dim=-1).view(shape)

        reference = reference_points[:, :, None, :, None, :]  # [N, Lq, 1, L, 1, 2 or 4]
        if reference_points.shape[-1] == 2:
            level_wh = input_spatial_shapes.flip(-1).to(offsets.dtype)  # [L, 2] as (W, H)
            locations = reference + offsets / level_wh[None, None, None, :, None, :]
        else:
            locations = reference[..., :2] + offsets / self.n_points * reference[..., 2:] * 0.5

        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, self.impl
        )
        return self.output_proj(output)
