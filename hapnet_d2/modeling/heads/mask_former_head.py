"""Mask2Former semantic-segmentation head: pixel decoder + masked-attention transformer decoder."""

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..transformer_decoder import build_transformer_decoder


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

    Args:
        cfg: a config with HAPNet's keys.
        input_shape: backbone output shapes by feature name.

    Returns:
        a module registered in ``SEM_SEG_HEADS_REGISTRY`` that has ``forward_features``.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} has no forward_features method, so "
            "it cannot be used as a pixel decoder"
        )
    return model


@SEM_SEG_HEADS_REGISTRY.register()
class HAPNetMaskFormerHead(nn.Module):
    """Mask-classification head: per-pixel mask features and Q (class, mask) predictions."""

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, transformer_predictor: nn.Module):
        """
        Args:
            pixel_decoder: maps backbone features to ``(mask_features, multi_scale_features)``
                through ``forward_features``.
            transformer_predictor: maps ``(multi_scale_features, mask_features)`` to the
                prediction dict.
        """
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES lists {missing}, which the backbone does not "
                f"output (it has {sorted(input_shape)})"
            )
        input_shape = {k: input_shape[k] for k in in_features}
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(
                cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_classification=True
            ),
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, object]:
        """
        Args:
            features: backbone maps by name (``res2`` [B, C, H/4, W/4] ... ``res5``).

        Returns:
            dict with ``pred_logits`` [B, Q, K+1], ``pred_masks`` [B, Q, H/4, W/4] (logits) and,
            in training, ``aux_outputs``: a list of dicts with the same keys.
        """
        mask_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)
