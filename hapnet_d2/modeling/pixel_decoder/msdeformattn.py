"""Mask2Former's pixel decoder: a deformable-attention encoder over res3-res5 plus an FPN to res2.

The three lowest-resolution backbone maps are projected to a common width, flattened into one
token sequence and refined by multi-scale deformable self-attention (Deformable DETR encoder).
An FPN-style top-down path then adds the higher-resolution backbone maps (res2) and a 1x1
conv turns the stride-4 result into the per-pixel mask features.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from fvcore.nn.weight_init import c2_xavier_fill
from torch import nn

from hapnet_d2.ops import MSDeformAttn, level_start_index

from ..transformer_decoder.position_encoding import PositionEmbeddingSine


def encoder_reference_points(
    spatial_shapes: Sequence[Tuple[int, int]], valid_ratios: torch.Tensor
) -> torch.Tensor:
    """Reference points of the encoder tokens: pixel centres scaled by the valid ratios.

    Args:
        spatial_shapes: (H_l, W_l) of each of the L levels.
        valid_ratios: [N, L, 2] fraction (x, y) of each level that is not padding (1 = none).

    Returns:
        [N, S, L, 2] normalised (x, y) in [0, 1], S = sum(H_l * W_l): the centre of each token,
        normalised by its level's valid size, and re-expressed in every level's frame.
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            indexing="ij",
        )
        ref_x = ref_x.reshape(1, -1) / (valid_ratios[:, level, 0:1] * width)  # [N, HW]
        ref_y = ref_y.reshape(1, -1) / (valid_ratios[:, level, 1:2] * height)
        points.append(torch.stack((ref_x, ref_y), dim=-1))
    points = torch.cat(points, dim=1)  # [N, S, 2]
    return points[:, :, None] * valid_ratios[:, None]


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention then a ReLU FFN, each with residual, dropout and post-LayerNorm."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
        impl: str = "auto",
    ):
        """
        Args:
            d_model: token width.
            d_ffn: FFN hidden width.
            dropout: dropout on the residual branches and after the FFN activation.
            n_levels: feature levels L.
            n_heads: deformable attention heads.
            n_points: sampling points per head and level.
            impl: deformable attention implementation ("auto", "kernel" or "pytorch").
        """
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            src: tokens of all levels [N, S, C].
            pos: their position + level embeddings [N, S, C].
            reference_points: [N, S, L, 2] normalised (x, y).
            spatial_shapes: [L, 2] long (H, W) per level.
            level_start_index: [L] long offset of each level in S.

        Returns:
            [N, S, C].
        """
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of :class:`MSDeformAttnEncoderLayer` sharing the reference points."""

    def __init__(self, num_layers: int, **layer_kwargs):
        """
        Args:
            num_layers: number of encoder layers.
            layer_kwargs: arguments of :class:`MSDeformAttnEncoderLayer`.
        """
        super().__init__()
        self.layers = nn.ModuleList(
            [MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers)]
        )

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: List[Tuple[int, int]]
    ) -> torch.Tensor:
        """
        Args:
            src: tokens of all levels, flattened and concatenated [N, S, C].
            pos: position + level embeddings [N, S, C].
            spatial_shapes: (H_l, W_l) of each level, sum(H_l * W_l) = S.

        Returns:
            refined tokens [N, S, C].
        """
        shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=src.device)
        start_index = level_start_index(shapes)
        valid_ratios = src.new_ones(src.shape[0], len(spatial_shapes), 2, dtype=torch.float32)
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, shapes, start_index)
        return src


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention pixel decoder of Mask2Former.

    ``forward_features`` maps backbone features to the per-pixel mask features (stride
    ``common_stride``) and the multi-scale features the transformer decoder attends to.

    State-dict versions: 1 (HAPNet-D2 before 2026-12) had no bias in the encoder input
    projections when a norm follows them; 2 has it. Loading a version-1 state dict fills the
    missing biases with zeros, which computes exactly what the old model computed.
    """

    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        common_stride: int,
        msda_impl: str = "auto",
    ):
        """
        Args:
            input_shape: shapes of the backbone features the decoder uses (e.g. res2-res5).
            transformer_dropout: dropout in the encoder layers.
            transformer_nheads: deformable-attention heads.
            transformer_dim_feedforward: hidden width of the encoder FFNs.
            transformer_enc_layers: number of encoder layers.
            transformer_n_points: sampling points per head and level.
            conv_dim: width of the encoder and of the FPN.
            mask_dim: channels of the output mask features.
            norm: normalisation of the convs ("GN", "BN", "" for none, ...).
            transformer_in_features: features refined by the encoder (e.g. res3-res5).
            common_stride: stride of the output mask features.
            msda_impl: deformable attention implementation ("auto", "kernel" or "pytorch").
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: encoder features {missing} are not among the input "
                f"features {sorted(input_shape)}"
            )
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        # encoder levels from the lowest resolution (largest stride) to the highest
        encoder_shapes = [(k, v) for k, v in reversed(by_stride) if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in encoder_shapes]
        min_encoder_stride = encoder_shapes[-1][1].stride
        # FPN levels: one input per stride from common_stride up to the finest encoder stride
        num_fpn_levels = int(math.log2(min_encoder_stride) - math.log2(common_stride))
        fpn_strides = [common_stride * 2**i for i in range(num_fpn_levels)]
        name_by_stride = {v.stride: k for k, v in by_stride}
        if any(stride not in name_by_stride for stride in fpn_strides):
            raise ValueError(
                f"MSDeformAttnPixelDecoder: reaching common_stride={common_stride} from stride "
                f"{min_encoder_stride} needs inputs at strides {fpn_strides}, got "
                f"{ {k: v.stride for k, v in by_stride} }"
            )
        # top-down order: from the coarsest FPN input to the finest
        self.fpn_in_features = [name_by_stride[stride] for stride in reversed(fpn_strides)]
        self.common_stride = common_stride
        use_bias = norm == ""

        # The input projections keep their bias even before a norm, as in Mask2Former and the
        # official HAPNet (3 x conv_dim parameters); checkpoints saved without it still load
        # (see _load_from_state_dict).
        self.input_proj = nn.ModuleList()
        for _, shape in encoder_shapes:
            proj = Conv2d(shape.channels, conv_dim, 1, bias=True, norm=get_norm(norm, conv_dim))
            nn.init.xavier_uniform_(proj.weight, gain=1)
            nn.init.zeros_(proj.bias)
            self.input_proj.append(proj)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.level_encoding = nn.Parameter(torch.empty(len(encoder_shapes), conv_dim))
        nn.init.normal_(self.level_encoding)
        self.encoder = MSDeformAttnEncoder(
            transformer_enc_layers,
            d_model=conv_dim,
            d_ffn=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=len(encoder_shapes),
            n_heads=transformer_nheads,
            n_points=transformer_n_points,
            impl=msda_impl,
        )

        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for name in self.fpn_in_features:
            lateral = Conv2d(
                input_shape[name].channels,
                conv_dim,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Fill the input-projection biases of version-1 state dicts with zeros (see class doc).

        A state dict without version information (e.g. converted from another code base) is
        treated as version 1. Missing biases in a version-2 state dict stay missing.
        """
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            for i, proj in enumerate(self.input_proj):
                key = f"{prefix}input_proj.{i}.bias"
                if key not in state_dict and f"{prefix}input_proj.{i}.weight" in state_dict:
                    state_dict[key] = torch.zeros_like(proj.bias)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.TRANSFORMER_ENC_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "common_stride": head.COMMON_STRIDE,
            "msda_impl": cfg.MODEL.HAPNET.MSDA_IMPL,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone maps by name, e.g. ``res2`` [B, C2, H/4, W/4] ... ``res5``
                [B, C5, H/32, W/32] (sizes may be rounded up).

        Returns:
            mask_features: [B, mask_dim, H/4, W/4], the size of the finest FPN input.
            multi_scale_features: the encoder outputs [B, conv_dim, h_l, w_l], lowest resolution
                (res5) first, highest (res3) last.
        """
        missing = [
            f for f in self.transformer_in_features + self.fpn_in_features if f not in features
        ]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: input features {missing} are missing (got "
                f"{sorted(features)})"
            )
        tokens, positions, sizes = [], [], []
        for level, name in enumerate(self.transformer_in_features):
            x = self.input_proj[level](features[name])
            sizes.append(tuple(x.shape[-2:]))
            tokens.append(x.flatten(2).transpose(1, 2))
            pos = self.pe_layer(x).flatten(2).transpose(1, 2)
            positions.append(pos + self.level_encoding[level][None, None, :])
        memory = self.encoder(torch.cat(tokens, 1), torch.cat(positions, 1), sizes)

        batch = memory.shape[0]
        split = memory.split([h * w for h, w in sizes], dim=1)
        outs = [
            level.transpose(1, 2).reshape(batch, -1, h, w) for level, (h, w) in zip(split, sizes)
        ]
        for name, lateral_conv, output_conv in zip(
            self.fpn_in_features, self.lateral_convs, self.output_convs
        ):
            lateral = lateral_conv(features[name])
            top_down = F.interpolate(
                outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outs.append(output_conv(lateral + top_down))
        return self.mask_features(outs[-1]), outs[: len(self.transformer_in_features)]
