"""Cross-modal spatial prior descriptor (CSPD): a timm ConvNeXt run on RGB and thermal.

Paper Sect. 3.2.2: the RGB and thermal images go through the same (weight-shared) ConvNeXt
stem, stages and downsampling layers; each modality keeps its own final LayerNorm per stage;
the two modalities' stage outputs are summed. ``shared_weights=False`` gives each modality its
own ConvNeXt (Table 6, "separate weights").
"""
from typing import List, Optional

import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["CSPD"]

MODALITIES = ("rgb", "thermal")


class CSPD(nn.Module):
    """Multi-scale spatial priors from RGB and/or thermal images."""

    def __init__(
        self,
        *,
        name: str,
        modalities: List[str],
        shared_weights: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1.0,
    ):
        """
        Args:
            name: timm ConvNeXt name, e.g. ``convnext_small`` or ``convnext_atto``.
            modalities: the inputs it sees, a non-empty subset of ``["rgb", "thermal"]``.
            shared_weights: one ConvNeXt for both modalities (paper) or one each.
            drop_path_rate: stochastic depth rate.
            layer_scale_init: ConvNeXt layer-scale init (1.0 in the reference configuration).
        """
        super().__init__()
        if not modalities or any(m not in MODALITIES for m in modalities):
            raise ValueError(f"CSPD modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        self.modalities = list(modalities)
        self.shared_weights = shared_weights or len(self.modalities) == 1
        self.convnext = self._build(name, drop_path_rate, layer_scale_init)
        if not self.shared_weights:
            self.convnext_thermal = self._build(name, drop_path_rate, layer_scale_init)
        self.channels = [info["num_chs"] for info in self.convnext.feature_info]
        if len(self.channels) != 4:
            raise ValueError(f"MODEL.HAPNET.CSPD_NAME={name!r} must have 4 stages")
        for modality in self.modalities:
            norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.channels)
            self.add_module(f"norms_{modality}", norms)

    @staticmethod
    def _build(name: str, drop_path_rate: float, layer_scale_init: float) -> nn.Module:
        try:
            model = timm.create_model(
                name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                ls_init_value=layer_scale_init,
            )
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"MODEL.HAPNET.CSPD_NAME={name!r} is not a timm ConvNeXt: {e}") from e
        if not (hasattr(model, "stem") and hasattr(model, "stages")):
            raise ValueError(f"MODEL.HAPNET.CSPD_NAME={name!r} is not a timm ConvNeXt")
        # The classifier's head and pre-head norm are never run.
        model.head = nn.Identity()
        model.norm_pre = nn.Identity()
        return model

    def networks(self):
        """``(modality, convnext)`` pairs in the order the modalities are run."""
        if self.shared_weights:
            return [(tuple(self.modalities), self.convnext)]
        return [(("rgb",), self.convnext), (("thermal",), self.convnext_thermal)]

    def forward(self, rgb: Optional[torch.Tensor], thermal: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            rgb: ``[B, 3, H, W]`` normalised RGB (may be None if not a CSPD modality).
            thermal: ``[B, 3, H, W]`` normalised thermal (may be None likewise).
        Returns:
            Four maps ``[B, C_i, H/s, W/s]`` for strides 4, 8, 16, 32: per stage, the sum over
            modalities of the modality's normalised stage output.
        """
        inputs = {"rgb": rgb, "thermal": thermal}
        outs = [0, 0, 0, 0]
        for modalities, net in self.networks():
            # modalities sharing weights run as one batch
            x = torch.cat([inputs[m] for m in modalities], dim=0)
            x = net.stem(x)
            for i, stage in enumerate(net.stages):
                x = stage(x)
                for m, part in zip(modalities, x.chunk(len(modalities), dim=0)):
                    outs[i] = outs[i] + getattr(self, f"norms_{m}")[i](part)
        return outs
