"""Per-segment (label, mask) targets of Mask2Former from a batch's ground-truth ``Instances``."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import BitMasks, Instances

__all__ = ["instances_to_mask_targets"]


def _mask_tensor(gt_masks) -> torch.Tensor:
    """``gt_masks`` as a [N, H, W] tensor (accepts BitMasks or a tensor)."""
    if isinstance(gt_masks, BitMasks):
        return gt_masks.tensor
    if isinstance(gt_masks, torch.Tensor):
        return gt_masks
    raise TypeError(f"gt_masks must be BitMasks or a [N, H, W] tensor, got {type(gt_masks).__name__}")


def instances_to_mask_targets(
    instances: Sequence[Instances],
    padded_size: Tuple[int, int],
    num_classes: int,
    file_names: Optional[Sequence[str]] = None,
    device: Optional[torch.device] = None,
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> List[Dict[str, torch.Tensor]]:
    """One binary mask per ground-truth segment, zero-padded (bottom/right) to the batch size.

    Padding matches :class:`detectron2.structures.ImageList` (images are padded at the bottom and
    right), so padded pixels belong to no segment.

    Args:
        instances: B ``Instances`` with ``gt_classes`` [N] (contiguous ids in [0, num_classes))
            and ``gt_masks`` (BitMasks or bool/0-1 tensor [N, h, w], h x w = that image's size).
        padded_size: (H, W) of the padded batch, H >= h and W >= w for every image.
        num_classes: K.
        file_names: optional B file names, used in error messages.
        device: where the targets go (default: that of the masks).
        image_sizes: optional B (h, w) sizes of the input images; the masks must have them.

    Returns:
        B dicts with ``labels`` [N] int64 and ``masks`` [N, H, W] float (1 inside the segment).

    Raises:
        ValueError: a class outside [0, num_classes), a mask larger than ``padded_size``, or
            masks whose count differs from the classes, or masks of another size than their image;
            the message names the image.
    """
    height, width = padded_size
    targets = []
    for i, inst in enumerate(instances):
        where = f"{file_names[i]!r}" if file_names is not None and file_names[i] else f"image {i} of the batch"
        if not (inst.has("gt_classes") and inst.has("gt_masks")):
            raise ValueError(f"{where}: 'instances' need gt_classes and gt_masks, got fields {list(inst.get_fields())}")
        labels = inst.gt_classes.to(torch.int64)
        masks = _mask_tensor(inst.gt_masks)
        if masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{where}: gt_masks must be [N, H, W] with N = len(gt_classes) = {labels.shape[0]}, "
                f"got {tuple(masks.shape)}"
            )
        if image_sizes is not None and tuple(masks.shape[1:]) != tuple(image_sizes[i]):
            raise ValueError(
                f"{where}: instance masks are {tuple(masks.shape[1:])} but the image is "
                f"{tuple(image_sizes[i])} (H, W)"
            )
        if masks.shape[1] > height or masks.shape[2] > width:
            raise ValueError(
                f"{where}: instance masks of size {tuple(masks.shape[1:])} are larger than the "
                f"padded image {tuple(padded_size)}"
            )
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel() > 0:
            raise ValueError(
                f"{where}: instance classes {sorted(set(bad.tolist()))} are not class ids in "
                f"[0, {num_classes}); check the dataset's category mapping and "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES"
            )
        device_i = device if device is not None else masks.device
        padded = torch.zeros((masks.shape[0], height, width), dtype=torch.float32, device=device_i)
        padded[:, : masks.shape[1], : masks.shape[2]] = masks.to(device_i, torch.float32)
        targets.append({"labels": labels.to(device_i), "masks": padded})
    return targets
