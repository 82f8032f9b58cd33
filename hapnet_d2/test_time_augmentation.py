"""Test-time augmentation for RGB-thermal semantic segmentation: multi-scale and flip."""

from contextlib import nullcontext
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.transforms import ResizeTransform
from PIL import Image
from torch import nn

__all__ = ["SemanticSegmentorWithTTA"]


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """
    Resize a ``[C, H, W]`` image bilinearly with Detectron2's :class:`ResizeTransform` (the
    transform the dataset mappers use), keeping its dtype.
    """
    old_height, old_width = image.shape[-2:]
    if (old_height, old_width) == (height, width):
        return image
    transform = ResizeTransform(old_height, old_width, height, width, interp=Image.BILINEAR)
    resized = transform.apply_image(image.permute(1, 2, 0).cpu().numpy())
    if resized.ndim == 2:  # PIL drops a single channel
        resized = resized[:, :, None]
    return torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))


class SemanticSegmentorWithTTA(nn.Module):
    """
    Runs a semantic segmentation model on resized (and flipped) copies of each input and
    averages the per-class score maps at the output size.
    """

    @configurable
    def __init__(self, *, model: nn.Module, scales: Sequence[float], flip: bool):
        """
        Args:
            model: a model taking ``list[dict]`` inputs with "image" and "thermal" ``[3, H, W]``
                and returning ``[{"sem_seg": [K, height, width]}]``; may be wrapped in
                DistributedDataParallel.
            scales: resize factors relative to the input size (e.g. 1.0, 1.25, 1.5).
            flip: also run every scale on horizontally flipped inputs.
        """
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"TEST.AUG.SCALES must be positive numbers, got {list(scales)}.")
        self.model = model
        self.scales = list(scales)
        self.flip = flip

    @classmethod
    def from_config(cls, cfg, model):
        return {"model": model, "scales": cfg.TEST.AUG.SCALES, "flip": cfg.TEST.AUG.FLIP}

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            batched_inputs: dicts with "image" ``[3, H, W]``, "thermal" ``[3, H, W]`` and
                optionally "height", "width" (output size; default: the input size).

        Returns:
            One dict per input with "sem_seg" ``[K, height, width]``: the mean of the model's
            score maps over all scales and flips (semantic only, also when the model's panoptic
            or instance output is on).
        """
        return [self._inference_one(inputs) for inputs in batched_inputs]

    def _augmented_inputs(self, inputs: Dict) -> List[Tuple[Dict, bool]]:
        """``(copy of inputs, is_flipped)`` for every scale, and its flipped version."""
        height, width = inputs["image"].shape[-2:]
        output_size = {"height": inputs.get("height", height), "width": inputs.get("width", width)}
        augmented = []
        for scale in self.scales:
            size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
            resized = {
                **inputs,
                **output_size,
                "image": _resize(inputs["image"], *size),
                "thermal": _resize(inputs["thermal"], *size),
            }
            augmented.append((resized, False))
            if self.flip:
                flipped = {
                    **resized,
                    "image": resized["image"].flip(-1),
                    "thermal": resized["thermal"].flip(-1),
                }
                augmented.append((flipped, True))
        return augmented

    def _inference_one(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        augmented = self._augmented_inputs(inputs)
        step = 2 if self.flip else 1  # a scale and its flipped copy go to the model together
        total = None
        # panoptic / instance outputs are not averaged: ask a model that has them for sem_seg only
        semantic_only = getattr(self.model, "semantic_only", None)
        with torch.no_grad(), (semantic_only() if semantic_only is not None else nullcontext()):
            for start in range(0, len(augmented), step):
                group = augmented[start : start + step]
                outputs = self.model([aug for aug, _ in group])
                for (_, flipped), output in zip(group, outputs):
                    scores = output["sem_seg"].flip(-1) if flipped else output["sem_seg"]
                    total = scores if total is None else total + scores
        return {"sem_seg": total / len(augmented)}
