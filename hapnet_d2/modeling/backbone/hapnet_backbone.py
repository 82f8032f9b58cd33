"""HAPNet's hybrid, asymmetric encoder as a Detectron2 backbone (paper Sect. 3.2, Fig. 1).

VFM (ViT on RGB) + CSPD (ConvNeXt on RGB and thermal), fused stage by stage by GLCA and CCG.
Outputs ``res2..res5``: ``embed_dim`` channels at strides 4, 8, 16, 32.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.utils import comm
from torch import nn

from hapnet_d2.ops import level_start_index

from .cspd import CSPD
from .fusion import CCG, GLCA, init_conv_fan_out_, reference_points
from .pretrained import load_cspd_weights, load_vfm_weights
from .timm_vit import TimmViT

__all__ = ["HAPNetBackbone", "INPUT_STRATEGIES", "resolve_norm"]

# Paper Table 5: what the VFM and the CSPD see.
INPUT_STRATEGIES = {
    "A": (["rgb", "thermal"], ["rgb", "thermal"]),
    "B": (["rgb", "thermal"], ["rgb"]),
    "C": (["rgb", "thermal"], ["thermal"]),
    "D": (["rgb"], ["rgb", "thermal"]),
    "E": (["rgb"], ["rgb"]),
    "F": (["rgb"], ["thermal"]),
    "G": (["thermal"], ["rgb", "thermal"]),
    "H": (["thermal"], ["rgb"]),
    "I": (["thermal"], ["thermal"]),
}


def resolve_norm(norm: str) -> str:
    """``"auto"``: SyncBN when distributed (Detectron2's naive version on CPU, where
    torch's SyncBatchNorm does not run), plain BN otherwise; other values pass through."""
    if norm != "auto":
        return norm
    if comm.get_world_size() > 1:
        return "SyncBN" if torch.cuda.is_available() else "naiveSyncBN"
    return "BN"


def check_backbone_inputs(rgb: torch.Tensor, thermal: torch.Tensor, divisibility: int) -> None:
    """ValueError unless RGB and thermal are ``[B, 3, H, W]`` of one shape, H and W multiples of
    ``divisibility`` (the meta-architecture pads them)."""
    if rgb.shape != thermal.shape or rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(
            f"expected RGB and thermal of equal shape [B,3,H,W], got {tuple(rgb.shape)} and {tuple(thermal.shape)}"
        )
    if rgb.shape[-2] % divisibility or rgb.shape[-1] % divisibility:
        raise ValueError(f"input size {tuple(rgb.shape[-2:])} must be a multiple of {divisibility} (pad it)")


@BACKBONE_REGISTRY.register()
class HAPNetBackbone(Backbone):
    """Hybrid asymmetric encoder. Unlike most Detectron2 backbones it takes two images."""

    @configurable
    def __init__(
        self,
        *,
        vfm: TimmViT,
        cspd: CSPD,
        vfm_modalities: List[str],
        use_glca: bool = True,
        use_ccg: bool = True,
        num_heads: int = 12,
        num_points: int = 4,
        deform_ratio: float = 0.5,
        ffn_ratio: float = 0.25,
        gamma_init: float = 1e-6,
        extra_extractors: int = 2,
        drop_path: float = 0.0,
        out_norm: str = "BN",
        msda_impl: str = "auto",
    ):
        """
        Args:
            vfm: the ViT branch; cspd: the ConvNeXt branch (its modalities are its own).
            vfm_modalities: what the ViT patch-embeds (embeddings of two modalities are summed).
            use_glca / use_ccg: the PHFI switches of Table 7 (both off = element-wise sum).
            num_heads, num_points, deform_ratio: deformable attention settings of GLCA and CCG.
            ffn_ratio: ConvFFN hidden width / dim. gamma_init: GLCA's initial scale.
            extra_extractors: additional CCGs after the last stage's.
            drop_path: CCG FFN stochastic depth. out_norm: norm of the four outputs.
        """
        super().__init__()
        self.vfm = vfm
        self.cspd = cspd
        self.vfm_modalities = list(vfm_modalities)
        dim = vfm.embed_dim
        self.fc = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in cspd.channels)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        nn.init.normal_(self.level_embed)
        attn = dict(num_heads=num_heads, num_points=num_points, ratio=deform_ratio, impl=msda_impl)
        self.glca = nn.ModuleList(GLCA(dim, gamma_init=gamma_init, **attn) for _ in range(4)) if use_glca else None
        if use_ccg:
            self.ccg = nn.ModuleList(CCG(dim, ffn_ratio=ffn_ratio, drop_path=drop_path, **attn) for _ in range(4))
            self.extra_ccg = nn.ModuleList(
                CCG(dim, ffn_ratio=ffn_ratio, drop_path=drop_path, **attn) for _ in range(extra_extractors)
            )
        else:
            self.ccg = self.extra_ccg = None
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        init_conv_fan_out_(self.up)  # as the official adapter; fc1-4 keep PyTorch's default
        self.out_norms = nn.ModuleList(get_norm(out_norm, dim) for _ in range(4))

        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_strides = dict(zip(self._out_features, [4, 8, 16, 32]))
        self._out_feature_channels = {k: dim for k in self._out_features}

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        h = cfg.MODEL.HAPNET
        strategy = h.INPUT_STRATEGY.upper()
        if strategy not in INPUT_STRATEGIES:
            raise ValueError(f"MODEL.HAPNET.INPUT_STRATEGY={h.INPUT_STRATEGY!r} is not one of A-I")
        vfm_modalities, cspd_modalities = INPUT_STRATEGIES[strategy]
        crop = tuple(cfg.INPUT.CROP.SIZE)
        vfm = TimmViT(
            name=h.VFM_NAME,
            img_size=crop,
            stages=h.VFM_STAGES,
            drop_path_rate=h.VFM_DROP_PATH,
            layer_scale_init=h.VFM_LAYER_SCALE_INIT,
            extra_kwargs=dict(h.VFM_KWARGS),
            cache_rel_pos_bias=h.VFM_CACHE_REL_POS_BIAS,
        )
        cspd = CSPD(
            name=h.CSPD_NAME,
            modalities=cspd_modalities,
            shared_weights=h.CSPD_SHARED_WEIGHTS,
            drop_path_rate=h.CSPD_DROP_PATH,
            img_size=crop,  # encoders built for a fixed size (Swin)
        )
        if h.VFM_WEIGHTS:
            load_vfm_weights(
                vfm,
                h.VFM_WEIGHTS,
                allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
                rel_pos_resize=h.VFM_REL_POS_RESIZE,
            )
        if h.CSPD_WEIGHTS:
            load_cspd_weights(cspd, h.CSPD_WEIGHTS, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS)
        return dict(
            vfm=vfm,
            cspd=cspd,
            vfm_modalities=vfm_modalities,
            use_glca=h.USE_GLCA,
            use_ccg=h.USE_CCG,
            num_heads=h.DEFORM_NUM_HEADS,
            num_points=h.DEFORM_NUM_POINTS,
            deform_ratio=h.DEFORM_RATIO,
            ffn_ratio=h.CFFN_RATIO,
            gamma_init=h.GLCA_GAMMA_INIT,
            extra_extractors=h.EXTRA_EXTRACTORS,
            drop_path=h.PHFI_DROP_PATH,
            out_norm=resolve_norm(h.OUT_NORM),
            msda_impl=h.MSDA_IMPL,
        )

    @property
    def size_divisibility(self) -> int:
        return 32

    def _spatial_prior(self, rgb, thermal) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSPD features projected to ``dim``.

        Returns:
            c1 ``[B, D, H/4, W/4]``; c ``[B, S, D]`` (strides 8/16/32 flattened, level embedding
            added); prior_shapes ``[3, 2]``.
        """
        feats = self.cspd(rgb, thermal)
        c1 = self.fc[0](feats[0])
        maps = [self.fc[i](feats[i]) for i in (1, 2, 3)]
        shapes = torch.tensor([m.shape[-2:] for m in maps], dtype=torch.long, device=c1.device)
        tokens = [m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate(maps)]
        return c1, torch.cat(tokens, dim=1), shapes

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            rgb: ``[B, 3, H, W]`` normalised RGB; thermal: ``[B, 3, H, W]`` normalised thermal.
                H and W must be multiples of 32.
        Returns:
            ``{"res2": [B, D, H/4, W/4], "res3": [B, D, H/8, W/8], "res4": [B, D, H/16, W/16],
            "res5": [B, D, H/32, W/32]}``.
        """
        check_backbone_inputs(rgb, thermal, self.size_divisibility)
        inputs = {"rgb": rgb, "thermal": thermal}
        c1, c, prior_shapes = self._spatial_prior(
            *(inputs[m] if m in self.cspd.modalities else None for m in ("rgb", "thermal"))
        )
        prior_start = level_start_index(prior_shapes)

        tokens, grid = None, None
        for m in self.vfm_modalities:
            t, grid = self.vfm.embed(inputs[m])
            tokens = t if tokens is None else tokens + t
        vit_shape = torch.tensor([grid], dtype=torch.long, device=rgb.device)
        vit_ref = reference_points(vit_shape, device=rgb.device)
        prior_ref = reference_points(prior_shapes, device=rgb.device)
        num_prefix = self.vfm.num_prefix_tokens

        stage_outputs = []
        with self.vfm.token_grid(grid):
            x = self.vfm.add_prefix_and_position(tokens, grid)
            for i in range(4):
                prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
                if self.glca is not None:
                    patches = self.glca[i](patches, c, vit_ref, prior_shapes, prior_start)
                x = self.vfm.forward_stage(torch.cat([prefix, patches], dim=1), i)
                patches = x[:, num_prefix:]
                if self.ccg is not None:
                    extractors = [self.ccg[i]] + (list(self.extra_ccg) if i == 3 else [])
                    for ccg in extractors:
                        c = ccg(c, patches, prior_ref, vit_shape, prior_shapes)
                stage_outputs.append(patches.transpose(1, 2).reshape(x.shape[0], -1, *grid))

        sizes = [h * w for h, w in prior_shapes.tolist()]
        c2, c3, c4 = (
            t.transpose(1, 2).reshape(t.shape[0], -1, h, w)
            for t, (h, w) in zip(c.split(sizes, dim=1), prior_shapes.tolist())
        )
        c1 = c1 + self.up(c2)
        outs = {}
        for i, (name, ci) in enumerate(zip(self._out_features, (c1, c2, c3, c4))):
            vit = F.interpolate(stage_outputs[i], size=ci.shape[-2:], mode="bilinear", align_corners=False)
            outs[name] = self.out_norms[i](ci + vit)
        return outs
