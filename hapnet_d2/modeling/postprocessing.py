"""Panoptic and instance outputs from Mask2Former's per-query (class, mask) predictions.

Both functions follow the rules of Mask2Former's ``MaskFormer.panoptic_inference`` and
``MaskFormer.instance_inference`` for one image; semantic scores are
:func:`hapnet_d2.modeling.semantic_targets.semantic_inference`. Class ids are contiguous
(0..K-1); class index K of ``mask_cls`` is "no object".
"""

from typing import Collection, Dict, List, Tuple

import torch
from detectron2.structures import BitMasks, Instances

__all__ = ["panoptic_inference", "instance_inference"]


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    thing_ids: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Non-overlapping segments of one image.

    Rules (Mask2Former): each query's score and label are the max / argmax of its class softmax;
    queries predicting "no object" or scoring at most ``object_mask_threshold`` are dropped. Each
    pixel goes to the kept query with the largest ``score * sigmoid(mask)``. A query keeps the
    pixels it won that also have ``sigmoid(mask) >= 0.5``, provided the area it won is at least
    ``overlap_threshold`` times its own ``sigmoid(mask) >= 0.5`` area (else it is dropped).
    Queries of one stuff class merge into one segment; every thing query is its own segment.
    Segment ids are 1, 2, ... in query order; 0 is void.

    Args:
        mask_cls: class logits [Q, K+1].
        mask_pred: mask logits [Q, H, W].
        thing_ids: contiguous ids of the thing classes (the others are stuff).
        object_mask_threshold: minimum class score of a kept query (Mask2Former: 0.8).
        overlap_threshold: minimum fraction of a query's own mask it must win (Mask2Former: 0.8).

    Returns:
        ``(panoptic_seg, segments_info)``: segment ids [H, W] int32 (0 = void) and one dict
        ``{"id", "isthing", "category_id"}`` per segment, as Detectron2's panoptic outputs.
    """
    num_classes = mask_cls.shape[-1] - 1
    thing_ids = {int(i) for i in thing_ids}
    scores, labels = mask_cls.float().softmax(-1).max(-1)
    masks = mask_pred.float().sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    winner = (cur_scores[:, None, None] * cur_masks).argmax(0)  # [H, W] index into kept queries
    stuff_segment_of_class: Dict[int, int] = {}
    for k in range(cur_classes.shape[0]):
        category_id = int(cur_classes[k])
        isthing = category_id in thing_ids
        won = winner == k
        won_area = int(won.sum())
        own_area = int((cur_masks[k] >= 0.5).sum())
        mask = won & (cur_masks[k] >= 0.5)
        if won_area == 0 or own_area == 0 or not bool(mask.any()):
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not isthing and category_id in stuff_segment_of_class:
            panoptic_seg[mask] = stuff_segment_of_class[category_id]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment_of_class[category_id] = segment_id
        panoptic_seg[mask] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": category_id})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    num_classes: int,
    thing_ids: Collection[int],
    has_stuff: bool,
    topk: int,
) -> Instances:
    """Scored instance masks of one image.

    Rules (Mask2Former): the ``topk`` largest of all Q x K (query, class) softmax scores ("no
    object" excluded) each give one candidate; when the dataset has stuff classes only thing-class
    candidates are kept. Mask = ``mask logit > 0``; score = class score x mean ``sigmoid(mask)``
    inside the mask; box = the mask's tight box (zeros for an empty mask).

    Args:
        mask_cls: class logits [Q, K+1].
        mask_pred: mask logits [Q, H, W].
        num_classes: K.
        thing_ids: contiguous ids of the thing classes.
        has_stuff: whether the dataset has stuff classes (then stuff candidates are dropped).
        topk: candidates per image before the thing filter (Mask2Former: 100); at most Q x K.

    Returns:
        :class:`Instances` of size (H, W) with ``pred_masks`` [N, H, W] float (0/1),
        ``pred_boxes`` :class:`Boxes` [N, 4] (x0, y0, x1, y1), ``scores`` [N] and
        ``pred_classes`` [N] int64, in decreasing class-score order.
    """
    if mask_cls.shape[-1] != num_classes + 1:
        raise ValueError(
            f"instance_inference: class logits have {mask_cls.shape[-1]} columns, expected "
            f"num_classes + 1 = {num_classes + 1}"
        )
    num_queries = mask_cls.shape[0]
    scores = mask_cls.float().softmax(-1)[:, :-1]  # [Q, K]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    topk = min(topk, scores.numel())
    top_scores, top_indices = scores.flatten().topk(topk, sorted=True)
    top_labels = labels[top_indices]
    masks = mask_pred[top_indices // num_classes].float()
    if has_stuff:
        things = torch.tensor(sorted({int(i) for i in thing_ids}), dtype=top_labels.dtype, device=top_labels.device)
        is_thing = torch.isin(top_labels, things)
        top_scores, top_labels, masks = top_scores[is_thing], top_labels[is_thing], masks[is_thing]

    result = Instances(tuple(mask_pred.shape[-2:]))
    binary = masks > 0
    result.pred_masks = binary.float()
    result.pred_boxes = BitMasks(binary).get_bounding_boxes().to(mask_pred.device)
    flat = result.pred_masks.flatten(1)
    mask_scores = (masks.sigmoid().flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    result.scores = top_scores * mask_scores
    result.pred_classes = top_labels
    return result
