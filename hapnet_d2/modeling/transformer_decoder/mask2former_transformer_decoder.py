"""Mask2Former's multi-scale masked-attention transformer decoder.

A fixed set of learnable queries attends, layer by layer, to the three lowest-resolution
pixel-decoder scales in turn (res5, res4, res3, res5, ...). Each layer is masked cross-attention
(a query only sees the pixels its previous mask prediction covers), self-attention among the
queries and an FFN. After the initial query state and after every layer the queries are turned
into class logits and mask logits (dot product with the per-pixel mask features).
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from fvcore.nn.weight_init import c2_xavier_fill
from torch import nn
from torchvision.ops import MLP

from .position_encoding import PositionEmbeddingSine

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for the transformer decoders of a mask-classification head.

A registered class is called as ``cls(cfg, in_channels, mask_classification)`` and maps
``(multi_scale_features: list[Tensor[B, in_channels, h, w]], mask_features: Tensor[B, D, H, W])``
to a dict with ``pred_logits`` [B, Q, K+1], ``pred_masks`` [B, Q, H, W] and, in training,
``aux_outputs`` (a list of such dicts, one per intermediate prediction).
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """Build the transformer decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class _ResidualAttention(nn.Module):
    """Multi-head attention with a residual connection and a pre- or post- LayerNorm.

    Shared by the self-attention (queries attend to queries) and the masked cross-attention
    (queries attend to one pixel-decoder scale) layers of the decoder.
    """

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        """
        Args:
            d_model: query and memory width.
            nhead: attention heads.
            dropout: dropout on the attention weights and on the residual branch.
            normalize_before: pre-norm (True) or post-norm (False).
        """
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: queries [B, Q, C].
            memory: keys/values [B, S, C] (``tgt`` itself for self-attention).
            attn_mask: bool [B * nhead, Q, S], True = may not attend; or None.
            pos: position encoding of ``memory`` [B, S, C] or None.
            query_pos: position embedding of the queries [B, Q, C] or None.

        Returns:
            updated queries [B, Q, C].
        """
        query = self.norm(tgt) if self.normalize_before else tgt
        key_value = query if memory is tgt else memory
        out = self.attn(
            _with_pos(query, query_pos),
            _with_pos(key_value, pos),
            key_value,
            attn_mask=attn_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class SelfAttentionLayer(_ResidualAttention):
    """Self-attention among the queries (keys carry the query position embedding)."""

    def forward(self, tgt: torch.Tensor, query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            tgt: queries [B, Q, C].
            query_pos: query position embedding [B, Q, C] or None.

        Returns:
            [B, Q, C].
        """
        return super().forward(tgt, tgt, pos=query_pos, query_pos=query_pos)


class CrossAttentionLayer(_ResidualAttention):
    """Masked cross-attention from the queries to the flattened pixels of one scale."""


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        normalize_before: bool = False,
    ):
        """
        Args:
            d_model: input and output width.
            dim_feedforward: hidden width.
            dropout: dropout after the activation and on the residual branch.
            normalize_before: pre-norm (True) or post-norm (False).
        """
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tgt: [B, Q, C].

        Returns:
            [B, Q, C].
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        x = self.linear2(self.dropout(F.relu(self.linear1(x))))
        tgt = tgt + self.dropout(x)
        return tgt if self.normalize_before else self.norm(tgt)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder over three feature scales with deep supervision.

    In training, returns the final prediction plus ``aux_outputs``: the predictions from the
    initial query state and from every layer but the last (``dec_layers`` entries). In
    evaluation, only the final class and mask logits are computed (intermediate masks are
    evaluated at the small attention-mask resolutions only) and no ``aux_outputs`` is returned.

    Attention masks are built from mask logits at the resolution of the scale the next layer
    attends to. Bilinear resizing commutes with the per-pixel dot product that makes mask
    logits, so the mask features are resized once per scale and the dot product is taken at
    that resolution (the same as resizing full-resolution mask logits, but far cheaper).
    """

    num_feature_levels = 3

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        mask_classification: bool = True,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features from the pixel decoder.
            mask_classification: must be True (the decoder classifies every mask).
            num_classes: K, the number of semantic classes (the class head has K + 1 outputs,
                the last meaning "no object").
            hidden_dim: width of the queries and of the attention layers.
            num_queries: Q, the number of learnable queries.
            nheads: attention heads.
            dim_feedforward: hidden width of the FFNs.
            dec_layers: number of decoder layers (each = cross-attention, self-attention, FFN).
            pre_norm: LayerNorm before (True) or after (False) each residual block.
            mask_dim: channels of the mask features; the mask embedding has this width.
            enforce_input_project: add a 1x1 conv input projection even when
                ``in_channels == hidden_dim``.
            dropout: dropout in the attention and FFN layers.
            deep_supervision: return the intermediate predictions as ``aux_outputs`` in training.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError(
                "MultiScaleMaskedTransformerDecoder: only mask classification is supported "
                "(mask_classification=False was given)"
            )
        self.mask_classification = mask_classification
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.deep_supervision = deep_supervision

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        for _ in range(dec_layers):
            self.transformer_cross_attention_layers.append(
                CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm)
            )
            self.transformer_self_attention_layers.append(
                SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm)
            )
            self.transformer_ffn_layers.append(
                FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm)
            )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)

        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Identity())

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(
            hidden_dim, [hidden_dim, hidden_dim, mask_dim], activation_layer=nn.ReLU
        )

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool = True):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "dropout": mf.DROPOUT,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def forward(self, x: List[torch.Tensor], mask_features: torch.Tensor) -> Dict[str, object]:
        """
        Args:
            x: ``num_feature_levels`` (3) maps [B, in_channels, h_l, w_l], lowest resolution first.
            mask_features: per-pixel embeddings [B, mask_dim, H, W] (stride 4).

        Returns:
            dict with ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, H, W] (logits) of the
            last layer, and in training with deep supervision ``aux_outputs``: a list of
            ``dec_layers`` dicts with the same two keys, from the initial query state onwards.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder expects {self.num_feature_levels} feature "
                f"maps, got {len(x)}"
            )
        batch = mask_features.shape[0]
        memories, positions, sizes = [], [], []
        for level, feature in enumerate(x):
            sizes.append(tuple(feature.shape[-2:]))
            positions.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
            memory = self.input_proj[level](feature).flatten(2).transpose(1, 2)
            memories.append(memory + self.level_embed.weight[level][None, None, :])
        # mask features at each attention resolution, for the attention masks
        small_mask_features = [
            F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
            for size in sizes
        ]

        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        full_outputs = self.training
        predictions = []
        if full_outputs:
            predictions.append(self._predict(output, mask_features))
        attn_mask = self._attention_mask(output, small_mask_features[0])
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output,
                memories[level],
                attn_mask=attn_mask,
                pos=positions[level],
                query_pos=query_pos,
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            is_last = i == self.num_layers - 1
            if full_outputs or is_last:
                predictions.append(self._predict(output, mask_features))
            if not is_last:
                next_level = (i + 1) % self.num_feature_levels
                attn_mask = self._attention_mask(output, small_mask_features[next_level])

        out = dict(predictions[-1])
        if full_outputs and self.deep_supervision:
            out["aux_outputs"] = predictions[:-1]
        return out

    def _mask_logits(self, output: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Queries [B, Q, C] and mask features [B, D, h, w] -> mask logits [B, Q, h, w]."""
        mask_embed = self.mask_embed(self.decoder_norm(output))
        return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Queries [B, Q, C] -> ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, H, W]."""
        return {
            "pred_logits": self.class_embed(self.decoder_norm(output)),
            "pred_masks": self._mask_logits(output, mask_features),
        }

    def _attention_mask(self, output: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Cross-attention mask from the current queries' mask predictions.

        Args:
            output: queries [B, Q, C].
            mask_features: mask features resized to the attended scale [B, D, h, w].

        Returns:
            bool [B * nheads, Q, h * w]; True where the predicted mask probability is below 0.5
            (not attended). Rows that would be fully masked are fully unmasked instead.
        """
        with torch.no_grad():
            attn_mask = self._mask_logits(output, mask_features).flatten(2).sigmoid() < 0.5
            # elementwise (no in-place or data-dependent indexing), so that it exports to ONNX
            attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)
        return attn_mask.repeat_interleave(self.num_heads, dim=0)
