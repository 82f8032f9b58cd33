"""Symmetric duplex encoders (paper Table 8) as a Detectron2 backbone.

The baselines HAPNet is compared with in Table 8 run *the same* encoder on the RGB image and on
the thermal image and fuse the two feature pyramids scale by scale, by element-wise summation or
by concatenation; the fused ``res2..res5`` go to HAPNet's Mask2Former decoder unchanged. Two
encoder families are supported:

* a timm ConvNeXt (``convnext_small`` in the paper): its four stages give strides 4/8/16/32
  (any other 4-level timm encoder works too, as for the CSPD);
* a timm plain ViT (``beitv2_base_patch16_224`` in the paper), built like HAPNet's VFM
  (:class:`TimmViT`); its single stride-16 scale is turned into a four-level pyramid as in
  ViT-Adapter / ViTDet.

CMNeXt's asymmetric encoder ("HAPNet CMNeXt-B4", the fifth row of Table 8) is not built here.
"""
from typing import Dict, List, Tuple

import timm
import torch
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from .cspd import CSPD
from .hapnet_backbone import check_backbone_inputs, resolve_norm
from .pretrained import load_cspd_weights, load_vfm_weights
from .timm_vit import TimmViT

__all__ = ["DuplexBackbone", "CNNEncoder", "ViTPyramidEncoder", "build_duplex_encoder"]

FUSIONS = ("sum", "concat")
# timm modules whose models TimmViT can run (plain ViTs: BEiT/BEiTv2, ViT/AugReg/DINOv2, DeiT)
_PLAIN_VIT_MODULES = ("timm.models.beit", "timm.models.vision_transformer", "timm.models.deit")


class CNNEncoder(CSPD):
    """A hierarchical CNN encoder on one image: the CSPD's encoder (timm ConvNeXt, or any
    4-level timm encoder) with one LayerNorm per stage output, run on a single input.

    Module names are the CSPD's (``convnext.stem``, ``convnext.stages.{i}``, ``norms_rgb.{i}``),
    so timm and official checkpoints load with :func:`load_cspd_weights` and the optimiser's
    layer ids (:func:`cspd_layer_id`) apply.
    """

    def __init__(self, *, name: str, drop_path_rate: float = 0.0, img_size=None):
        """
        Args:
            name: timm encoder name, e.g. ``convnext_small`` or ``convnext_atto``.
            drop_path_rate: stochastic depth rate.
            img_size: (H, W) for encoders built for a fixed size (Swin).
        """
        super().__init__(
            name=name, modalities=["rgb"], drop_path_rate=drop_path_rate, img_size=img_size,
            config_key="MODEL.DUPLEX.ENCODER",
        )

    def load_weights(self, path: str, allow_unsafe: bool = False, rel_pos_resize: str = "bicubic"):
        """A published ConvNeXt checkpoint (``rel_pos_resize`` is for ViTs; unused here)."""
        return load_cspd_weights(self, path, allow_unsafe=allow_unsafe)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: ``[B, 3, H, W]`` normalised image.
        Returns:
            four maps ``[B, C_i, H/s, W/s]``, s = 4, 8, 16, 32.
        """
        return super().forward(x, None)


class ViTPyramidEncoder(nn.Module):
    """A plain ViT whose four stage outputs (stride 16) become a stride 4/8/16/32 pyramid.

    As in ViT-Adapter / ViTDet's simple feature pyramid: the output of stage 0 is upsampled 4x by
    two stride-2 transposed convolutions (norm and GELU between), stage 1's 2x by one, stage 2's
    is kept, stage 3's is max-pooled 2x. The stages are HAPNet's (``MODEL.HAPNET.VFM_STAGES``:
    the last block of each group gives the feature, blocks 2, 5, 8, 11 for BEiTv2-B).
    """

    def __init__(self, *, vfm: TimmViT, norm: str = "BN"):
        """
        Args:
            vfm: the ViT, in stages. norm: the norm of the 4x upsampling path (Detectron2 name).
        """
        super().__init__()
        self.vfm = vfm
        dim = vfm.embed_dim
        self.channels = [dim] * 4
        self.pyramid = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim, 2, 2),
                    get_norm(norm, dim),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim, dim, 2, 2),
                ),
                nn.ConvTranspose2d(dim, dim, 2, 2),
                nn.Identity(),
                nn.MaxPool2d(2, 2),
            ]
        )

    def load_weights(self, path: str, allow_unsafe: bool = False, rel_pos_resize: str = "bicubic"):
        """A published ViT checkpoint; relative-position tables resized by ``rel_pos_resize``
        (MODEL.HAPNET.VFM_REL_POS_RESIZE, see :func:`resize_rel_pos_table`)."""
        return load_vfm_weights(self.vfm, path, allow_unsafe=allow_unsafe, rel_pos_resize=rel_pos_resize)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: ``[B, 3, H, W]`` normalised image, H and W multiples of 32.
        Returns:
            four maps ``[B, D, H/s, W/s]``, s = 4, 8, 16, 32.
        """
        tokens, grid = self.vfm.embed(x)
        num_prefix = self.vfm.num_prefix_tokens
        outs = []
        with self.vfm.token_grid(grid):
            x = self.vfm.add_prefix_and_position(tokens, grid)
            for i, up in enumerate(self.pyramid):
                x = self.vfm.forward_stage(x, i)
                patches = x[:, num_prefix:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
                outs.append(up(patches))
        return outs


def build_duplex_encoder(cfg) -> nn.Module:
    """One branch of the duplex encoder from ``MODEL.DUPLEX`` (ViTs also read ``MODEL.HAPNET``'s
    ``VFM_STAGES``, ``VFM_LAYER_SCALE_INIT``, ``VFM_KWARGS`` and ``OUT_NORM``)."""
    d, h = cfg.MODEL.DUPLEX, cfg.MODEL.HAPNET
    if not timm.is_model(d.ENCODER):
        raise ValueError(f"MODEL.DUPLEX.ENCODER={d.ENCODER!r} is not a timm model")
    if timm.models.model_entrypoint(d.ENCODER).__module__ in _PLAIN_VIT_MODULES:
        vfm = TimmViT(
            name=d.ENCODER,
            img_size=tuple(cfg.INPUT.CROP.SIZE),
            stages=h.VFM_STAGES,
            drop_path_rate=d.DROP_PATH,
            layer_scale_init=h.VFM_LAYER_SCALE_INIT,
            extra_kwargs=dict(h.VFM_KWARGS),
            cache_rel_pos_bias=h.VFM_CACHE_REL_POS_BIAS,
        )
        return ViTPyramidEncoder(vfm=vfm, norm=resolve_norm(h.OUT_NORM))
    return CNNEncoder(name=d.ENCODER, drop_path_rate=d.DROP_PATH, img_size=tuple(cfg.INPUT.CROP.SIZE))


@BACKBONE_REGISTRY.register()
class DuplexBackbone(Backbone):
    """Symmetric duplex encoder: one encoder on RGB, the same on thermal, fused per scale.

    ``fusion="sum"`` adds the two modalities' maps. ``fusion="concat"`` concatenates them along
    channels and maps the ``2C`` channels back to ``C`` with a 1x1 convolution per scale. Like
    :class:`HAPNetBackbone` it takes two images and returns ``res2..res5``.
    """

    @configurable
    def __init__(
        self,
        *,
        encoder: nn.Module,
        encoder_thermal: nn.Module = None,
        fusion: str = "sum",
    ):
        """
        Args:
            encoder: the RGB branch (and the thermal one when ``encoder_thermal`` is None, i.e.
                shared weights); maps ``[B, 3, H, W]`` to four maps at strides 4/8/16/32 with
                ``encoder.channels`` channels.
            encoder_thermal: a separate thermal branch of the same architecture, or None.
            fusion: "sum" or "concat".
        """
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"MODEL.DUPLEX.FUSION must be one of {FUSIONS}, got {fusion!r}")
        self.encoder = encoder
        self.encoder_thermal = encoder_thermal
        self.fusion = fusion
        channels = list(encoder.channels)
        if encoder_thermal is not None and list(encoder_thermal.channels) != channels:
            raise ValueError(
                f"duplex branches differ: {channels} vs {list(encoder_thermal.channels)} channels"
            )
        self.fuse = None
        if fusion == "concat":
            self.fuse = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in channels)

        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_strides = dict(zip(self._out_features, [4, 8, 16, 32]))
        self._out_feature_channels = dict(zip(self._out_features, channels))

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        d = cfg.MODEL.DUPLEX
        if d.FUSION not in FUSIONS:
            raise ValueError(f"MODEL.DUPLEX.FUSION must be one of {FUSIONS}, got {d.FUSION!r}")
        encoder = build_duplex_encoder(cfg)
        encoder_thermal = None if d.SHARED_WEIGHTS else build_duplex_encoder(cfg)
        if d.WEIGHTS:
            for branch in (encoder, encoder_thermal):
                if branch is not None:
                    branch.load_weights(
                        d.WEIGHTS,
                        allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
                        rel_pos_resize=cfg.MODEL.HAPNET.VFM_REL_POS_RESIZE,
                    )
        return dict(encoder=encoder, encoder_thermal=encoder_thermal, fusion=d.FUSION)

    @property
    def size_divisibility(self) -> int:
        return 32

    def branch_features(
        self, rgb: torch.Tensor, thermal: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Unfused per-modality features (shared weights: both modalities run as one batch).

        Returns:
            RGB and thermal lists of four maps ``[B, C_i, H/s, W/s]``.
        """
        if self.encoder_thermal is None:
            feats = self.encoder(torch.cat([rgb, thermal], dim=0))
            pairs = [f.chunk(2, dim=0) for f in feats]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        return self.encoder(rgb), self.encoder_thermal(thermal)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            rgb: ``[B, 3, H, W]`` normalised RGB; thermal: ``[B, 3, H, W]`` normalised thermal
                (one channel replicated to three by the meta-architecture). H and W must be
                multiples of 32.
        Returns:
            ``{"res2": [B, C_0, H/4, W/4], ..., "res5": [B, C_3, H/32, W/32]}``.
        """
        check_backbone_inputs(rgb, thermal, self.size_divisibility)
        feats_rgb, feats_thermal = self.branch_features(rgb, thermal)
        outs = {}
        for i, (name, fr, ft) in enumerate(zip(self._out_features, feats_rgb, feats_thermal)):
            if self.fuse is None:
                outs[name] = fr + ft
            else:
                outs[name] = self.fuse[i](torch.cat([fr, ft], dim=1))
        return outs
