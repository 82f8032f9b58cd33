"""Conversions between semantic label maps and Mask2Former's per-class (label, mask) sets."""

from typing import Dict, List, Optional, Sequence

import torch


def semantic_to_mask_targets(
    sem_seg: torch.Tensor,
    num_classes: int,
    ignore_value: int,
    file_names: Optional[Sequence[str]] = None,
) -> List[Dict[str, torch.Tensor]]:
    """One binary mask per class present in each label map (the ignore value excluded).

    Args:
        sem_seg: label maps [B, H, W] (integer dtype), class ids in [0, num_classes) or
            ``ignore_value``.
        num_classes: K.
        ignore_value: label of pixels to ignore (e.g. 255).
        file_names: optional B label file names, used to say which file is bad in errors.

    Returns:
        B dicts with ``labels`` [n] int64 (sorted class ids) and ``masks`` [n, H, W] float
        (1 where the pixel has that class).

    Raises:
        ValueError: when a map contains a label outside [0, num_classes) that is not the ignore
            value; the message names the image and the offending values.
    """
    if sem_seg.dim() != 3 or sem_seg.is_floating_point():
        raise ValueError(
            f"semantic_to_mask_targets: sem_seg must be an integer [B, H, W] tensor, got "
            f"{sem_seg.dtype} {tuple(sem_seg.shape)}"
        )
    targets = []
    for i, label_map in enumerate(sem_seg):
        classes = torch.unique(label_map)
        classes = classes[classes != ignore_value]
        bad = classes[(classes < 0) | (classes >= num_classes)]
        if bad.numel() > 0:
            where = f"{file_names[i]!r}" if file_names is not None else f"image {i} of the batch"
            raise ValueError(
                f"{where}: label values {bad.tolist()} are not class ids in [0, {num_classes}) "
                f"nor the ignore value {ignore_value}; check the dataset's label encoding and "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES"
            )
        classes = classes.to(torch.int64)
        masks = (label_map[None] == classes[:, None, None]).float()
        targets.append({"labels": classes, "masks": masks})
    return targets


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class score maps from Q (class, mask) predictions of one image.

    Args:
        mask_cls: class logits [Q, K+1] (last = "no object").
        mask_pred: mask logits [Q, H, W].

    Returns:
        [K, H, W]: sum over queries of P(class k) * sigmoid(mask).
    """
    probs = mask_cls.softmax(-1)[..., :-1]
    return torch.einsum("qk,qhw->khw", probs, mask_pred.sigmoid())
