"""Set-prediction losses of Mask2Former: Hungarian matching, then class CE and point mask losses."""

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn

from .matcher import HungarianMatcher

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sigmoid BCE averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        inputs: mask logits [n, P].
        targets: binary targets [n, P].
        num_masks: normaliser (number of target masks in the batch).

    Returns:
        scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss (with +1 smoothing) summed over masks and divided by ``num_masks``.

    Args:
        inputs: mask logits [n, P].
        targets: binary targets [n, P].
        num_masks: normaliser.

    Returns:
        scalar loss.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Point uncertainty of class-agnostic mask logits [R, 1, P]: -|logit| (highest at 0)."""
    return -logits.abs()


def build_weight_dict(
    class_weight: float, mask_weight: float, dice_weight: float, num_aux_outputs: int
) -> Dict[str, float]:
    """Weights of every loss :class:`SetCriterion` returns, final and auxiliary.

    Returns:
        ``{"loss_ce": class_weight, "loss_mask": ..., "loss_dice": ..., "loss_ce_0": ...,
        ..., "loss_dice_{num_aux_outputs - 1}": dice_weight}``.
    """
    final = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(final)
    for i in range(num_aux_outputs):
        weights.update({f"{k}_{i}": v for k, v in final.items()})
    return weights


class SetCriterion(nn.Module):
    """Mask2Former losses for the final prediction and every auxiliary prediction.

    For each prediction set, queries are matched one-to-one to the target masks; matched queries
    are trained towards their target's class and mask, the others towards "no object" (class
    index K, down-weighted by ``eos_coef``). Mask losses are evaluated at ``num_points`` points per
    matched mask, chosen by PointRend importance sampling on the predicted logits.

    ``forward`` returns the unweighted losses; multiply each by ``weight_dict[name]`` and sum.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: K, the number of classes (without "no object").
            matcher: maps ``(outputs, targets)`` to per-image ``(query_idx, target_idx)`` pairs.
            weight_dict: weight of every loss name ``forward`` returns.
            eos_coef: class weight of "no object" in the CE loss.
            num_points: points per matched mask for the mask losses.
            oversample_ratio: candidate points drawn per kept point (>= 1).
            importance_sample_ratio: fraction of the points taken from the most uncertain
                candidates; the rest are uniformly random.
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        num_aux = mf.DEC_LAYERS if mf.DEEP_SUPERVISION else 0
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": build_weight_dict(
                mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, num_aux
            ),
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` [B, Q, K+1], ``pred_masks`` [B, Q, h, w] and optionally
                ``aux_outputs`` (list of dicts with the same two keys).
            targets: B dicts with ``labels`` [n_b] long in [0, K) and ``masks`` [n_b, H, W]
                binary (any resolution; all images of the batch the same size).

        Returns:
            unweighted scalar losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and, for auxiliary
            output i, ``loss_ce_i``, ``loss_mask_i``, ``loss_dice_i``.
        """
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_masks).items()})
        return losses

    @staticmethod
    def _num_masks(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Average number of target masks per process (at least 1), all-reduced if distributed."""
        num_masks = torch.as_tensor(
            float(sum(len(t["labels"]) for t in targets)), dtype=torch.float, device=device
        )
        if comm.get_world_size() > 1:
            dist.all_reduce(num_masks)
        return max(num_masks.item() / comm.get_world_size(), 1.0)

    def _losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """Match one prediction set to the targets and return its three losses."""
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices)}
        losses.update(self.loss_masks(outputs["pred_masks"], targets, indices, num_masks))
        return losses

    def loss_labels(
        self, logits: torch.Tensor, targets: List[Dict[str, torch.Tensor]], indices: Indices
    ) -> torch.Tensor:
        """Class CE: matched queries -> their target class, others -> "no object".

        Args:
            logits: [B, Q, K+1].
            targets: as in :meth:`forward`.
            indices: the matcher's output.

        Returns:
            scalar ``eos_coef``-weighted mean cross-entropy.
        """
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = self._query_index(indices)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight)

    def loss_masks(
        self,
        masks: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """Sigmoid BCE and dice between matched masks and targets at importance-sampled points.

        Args:
            masks: mask logits [B, Q, h, w].
            targets: as in :meth:`forward`.
            indices: the matcher's output.
            num_masks: normaliser.

        Returns:
            ``loss_mask`` and ``loss_dice`` scalars (zero, with gradient, when nothing matched).
        """
        batch_idx, query_idx = self._query_index(indices)
        src_masks = masks[batch_idx, query_idx][:, None].float()  # [n, 1, h, w]
        if src_masks.shape[0] == 0:
            zero = masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)])
        tgt_masks = tgt_masks[:, None].to(src_masks)  # [n, 1, H, W]

        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src_masks,
                uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(tgt_masks, coords, align_corners=False)[:, 0]
        point_logits = point_sample(src_masks, coords, align_corners=False)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _query_index(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flatten per-image matches into (batch index, query index) [n] tensors."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx, query_idx
