"""HAPNet meta-architecture: RGB-T inputs -> hybrid encoder -> Mask2Former head -> sem_seg.

Inputs follow Detectron2's convention: a list of dicts, one per image, with
- ``"image"``: ``[3, H, W]`` uint8 or float (0-255) in ``cfg.INPUT.FORMAT`` channel order,
- ``"thermal"``: ``[1, H, W]`` or ``[3, H, W]`` (0-255; one channel is replicated to three),
- ``"sem_seg"`` (training): ``[H, W]`` long, ``ignore_value`` (255) ignored,
- ``"height"``, ``"width"`` (optional): the output size (defaults to the input size).
Outputs: ``[{"sem_seg": [K, height, width]}]`` class scores.
"""
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..backbone.hapnet_backbone import resolve_norm
from ..criterion import SetCriterion
from ..heads.aux_head import AuxFCNHead
from ..semantic_targets import semantic_inference, semantic_to_mask_targets

__all__ = ["HAPNet"]


@META_ARCH_REGISTRY.register()
class HAPNet(nn.Module):
    """Hybrid asymmetric RGB-T scene parser with a mask-classification decoder."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        aux_head: nn.Module = None,
        aux_loss_weight: float = 0.4,
        num_classes: int,
        ignore_value: int = 255,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        thermal_mean: Tuple[float, ...],
        thermal_std: Tuple[float, ...],
        input_format: str = "RGB",
        test_mode: str = "slide",
        slide_crop: Tuple[int, int] = (480, 480),
        slide_stride: Tuple[int, int] = (320, 320),
    ):
        """
        Args:
            backbone: :class:`HAPNetBackbone` (takes RGB and thermal).
            sem_seg_head: Mask2Former head: features -> ``pred_logits``, ``pred_masks``.
            criterion: set criterion (matching + class/mask/dice losses, deep supervision).
            aux_head: training-only per-pixel head on res2 (None: off).
            pixel_mean/std: RGB normalisation on the 0-255 scale; thermal_mean/std likewise.
            input_format: channel order of ``"image"`` ("RGB" or "BGR").
            test_mode: "slide" (windows of ``slide_crop`` every ``slide_stride``) or "whole".
        """
        super().__init__()
        if test_mode not in ("slide", "whole"):
            raise ValueError(f"TEST.MODE must be 'slide' or 'whole', got {test_mode!r}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {input_format!r}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.aux_head = aux_head
        self.aux_loss_weight = aux_loss_weight
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.input_format = input_format
        self.test_mode = test_mode
        self.slide_crop = tuple(slide_crop)
        self.slide_stride = tuple(slide_stride)
        self.size_divisibility = backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("thermal_mean", torch.tensor(thermal_mean).view(-1, 1, 1), False)
        self.register_buffer("thermal_std", torch.tensor(thermal_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        aux = cfg.MODEL.HAPNET.AUX_HEAD
        aux_head = None
        if aux.ENABLED:
            aux_head = AuxFCNHead(
                backbone.output_shape()["res2"].channels,
                aux.CHANNELS,
                num_classes,
                dropout=aux.DROPOUT,
                norm=resolve_norm(cfg.MODEL.HAPNET.OUT_NORM),
                ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        return dict(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            criterion=SetCriterion(cfg),
            aux_head=aux_head,
            aux_loss_weight=aux.LOSS_WEIGHT,
            num_classes=num_classes,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            thermal_mean=cfg.MODEL.THERMAL_PIXEL_MEAN,
            thermal_std=cfg.MODEL.THERMAL_PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            test_mode=cfg.TEST.MODE,
            slide_crop=cfg.TEST.SLIDE_CROP,
            slide_stride=cfg.TEST.SLIDE_STRIDE,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ inputs
    def _normalised_pair(self, x: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """One input dict -> normalised RGB ``[3, H, W]`` and thermal ``[3, H, W]``."""
        name = x.get("file_name", "input")
        if "image" not in x or "thermal" not in x:
            raise KeyError(f"{name}: every input needs 'image' and 'thermal' tensors, got keys {sorted(x)}")
        image, thermal = x["image"], x["thermal"]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: 'image' must be [3,H,W], got {tuple(image.shape)}")
        if thermal.dim() == 2:
            thermal = thermal[None]
        if thermal.dim() != 3 or thermal.shape[0] not in (1, 3):
            raise ValueError(f"{name}: 'thermal' must be [1,H,W] or [3,H,W], got {tuple(thermal.shape)}")
        if thermal.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"{name}: RGB is {tuple(image.shape[-2:])} but thermal is {tuple(thermal.shape[-2:])} (H, W)"
            )
        image = image.to(self.device, torch.float32)
        if self.input_format == "BGR":
            image = image.flip(0)
        thermal = thermal.to(self.device, torch.float32).expand(3, -1, -1)
        return (image - self.pixel_mean) / self.pixel_std, (thermal - self.thermal_mean) / self.thermal_std

    def _batch(self, batched_inputs: List[Dict]) -> Tuple[ImageList, torch.Tensor]:
        pairs = [self._normalised_pair(x) for x in batched_inputs]
        rgb = ImageList.from_tensors([p[0] for p in pairs], self.size_divisibility)
        thermal = ImageList.from_tensors([p[1] for p in pairs], self.size_divisibility)
        return rgb, thermal.tensor

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts as described in the module docstring.
        Returns:
            training: dict of weighted losses (``loss_ce``, ``loss_mask``, ``loss_dice``, their
            ``_i`` deep-supervision copies, ``loss_aux``); inference: ``[{"sem_seg": [K, h, w]}]``.
        """
        if self.training:
            return self._losses(batched_inputs)
        return self._predict(batched_inputs)

    def _losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        rgb, thermal = self._batch(batched_inputs)
        missing = [x.get("file_name", i) for i, x in enumerate(batched_inputs) if "sem_seg" not in x]
        if missing:
            raise KeyError(f"training needs 'sem_seg' in every input; missing for {missing}")
        gt = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, self.ignore_value
        ).tensor.long()
        if gt.shape[-2:] != rgb.tensor.shape[-2:]:
            raise ValueError(f"labels of size {tuple(gt.shape[-2:])} do not match images of size "
                             f"{tuple(rgb.tensor.shape[-2:])} in {[x.get('file_name') for x in batched_inputs]}")
        features = self.backbone(rgb.tensor, thermal)
        outputs = self.sem_seg_head(features)
        targets = semantic_to_mask_targets(gt, self.num_classes, self.ignore_value)
        losses = self.criterion(outputs, targets)
        for k in list(losses):
            if k in self.criterion.weight_dict:
                losses[k] = losses[k] * self.criterion.weight_dict[k]
            else:
                losses.pop(k)
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_loss_weight * self.aux_head.loss(self.aux_head(features["res2"]), gt)
        return losses

    def _predict(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Semantic scores of every input. In whole mode, inputs of the same size run as one
        batch (test-time augmentation passes a flipped copy with each image); sliding windows
        run image by image."""
        pairs = [self._normalised_pair(x) for x in batched_inputs]
        whole = self.test_mode == "whole"
        infer = self.whole_inference if whole else self.slide_inference
        groups = defaultdict(list)  # whole: input size -> indices; slide: one group per input
        for i, (rgb, _) in enumerate(pairs):
            groups[tuple(rgb.shape[-2:]) if whole else i].append(i)
        scores = [None] * len(pairs)
        for indices in groups.values():
            rgb = torch.stack([pairs[i][0] for i in indices])
            thermal = torch.stack([pairs[i][1] for i in indices])
            for i, s in zip(indices, infer(rgb, thermal)):
                scores[i] = s
        results = []
        for x, (rgb, _), s in zip(batched_inputs, pairs, scores):
            height, width = rgb.shape[-2:]
            out_h, out_w = x.get("height", height), x.get("width", width)
            results.append({"sem_seg": sem_seg_postprocess(s, (height, width), out_h, out_w)})
        return results

    @torch.no_grad()
    def whole_inference(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """One pass over whole images (padded to a multiple of 32).

        Args:
            rgb, thermal: ``[B, 3, H, W]`` normalised.
        Returns:
            ``[B, K, H, W]`` float32 semantic scores (also under autocast).
        """
        height, width = rgb.shape[-2:]
        div = self.size_divisibility
        pad = (0, (-width) % div, 0, (-height) % div)
        features = self.backbone(F.pad(rgb, pad), F.pad(thermal, pad))
        outputs = self.sem_seg_head(features)
        # scores are formed in float32 also under autocast: bf16 would tie close classes
        with torch.autocast(rgb.device.type, enabled=False):
            masks = F.interpolate(
                outputs["pred_masks"].float(),
                size=(height + pad[3], width + pad[1]),
                mode="bilinear",
                align_corners=False,
            )[..., :height, :width]
            logits = outputs["pred_logits"].float()
            return torch.stack([semantic_inference(c, m) for c, m in zip(logits, masks)])

    @torch.no_grad()
    def slide_inference(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """Sliding-window inference: windows of ``slide_crop`` every ``slide_stride``, scores of
        overlapping windows averaged; windows beyond a small image are zero-padded.

        Args:
            rgb, thermal: ``[1, 3, H, W]`` normalised.
        Returns:
            ``[1, K, H, W]`` semantic scores.
        """
        height, width = rgb.shape[-2:]
        (crop_h, crop_w), (stride_h, stride_w) = self.slide_crop, self.slide_stride
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y1 = max(min(r * stride_h, height - crop_h), 0)
                x1 = max(min(c * stride_w, width - crop_w), 0)
                boxes.append((y1, x1, min(y1 + crop_h, height), min(x1 + crop_w, width)))

        def window(t, box):
            y1, x1, y2, x2 = box
            return F.pad(t[..., y1:y2, x1:x2], (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1)))

        scores = rgb.new_zeros((1, self.num_classes, height, width))
        count = rgb.new_zeros((1, 1, height, width))
        crop_scores = self.whole_inference(
            torch.cat([window(rgb, b) for b in boxes]), torch.cat([window(thermal, b) for b in boxes])
        )
        for s, (y1, x1, y2, x2) in zip(crop_scores, boxes):
            scores[..., y1:y2, x1:x2] += s[:, : y2 - y1, : x2 - x1]
            count[..., y1:y2, x1:x2] += 1
        return scores / count
