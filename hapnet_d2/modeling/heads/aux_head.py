"""Auxiliary local-semantics enhancement head (paper Sect. 3.4), training only.

A light FCN on the stride-4 fused feature (res2): 3x3 conv + norm + ReLU, dropout, 1x1 conv to
the K classes (the reference code's layout; the paper says "two convolutional layers"). Its
cross-entropy loss deep-supervises res2; it is never run at inference.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = ["AuxFCNHead"]


class AuxFCNHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        norm: str = "BN",
        ignore_value: int = 255,
    ):
        super().__init__()
        self.conv = Conv2d(
            in_channels,
            channels,
            3,
            padding=1,
            bias=False,
            norm=get_norm(norm, channels),
            activation=F.relu,
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # initialised as the reference (an mmseg FCNHead): the conv He-normal in fan-out mode
        # (mmcv ConvModule), the classifier normal with std 0.01 and zero bias
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.ignore_value = ignore_value

    def forward(self, res2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            res2: ``[B, C, H/4, W/4]``.
        Returns:
            class logits ``[B, K, H/4, W/4]``.
        """
        return self.classifier(self.dropout(self.conv(res2)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at label resolution.

        Args:
            logits: ``[B, K, h, w]``; targets: ``[B, H, W]`` long, ``ignore_value`` ignored.
        """
        logits = F.interpolate(
            logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
