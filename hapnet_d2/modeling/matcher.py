"""Hungarian matching of predicted (class, mask) pairs to ground-truth masks (Mask2Former)."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy between every prediction and every target.

    Args:
        inputs: mask logits at P points [N, P].
        targets: binary target masks at the same points [M, P].

    Returns:
        [N, M] cost.
    """
    num_points = inputs.shape[1]
    pos = F.softplus(-inputs)  # BCE against target 1
    neg = F.softplus(inputs)  # BCE against target 0
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (with +1 smoothing) between every prediction and every target.

    Args:
        inputs: mask logits at P points [N, P].
        targets: binary target masks at the same points [M, P].

    Returns:
        [N, M] cost.
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising class + mask + dice cost.

    The mask costs are computed on ``num_points`` points drawn uniformly at random for each
    image and shared by the predictions and the targets (masks of any resolution).
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 0,
    ):
        """
        Args:
            cost_class: weight of the classification cost (minus the target class probability).
            cost_mask: weight of the sigmoid BCE cost.
            cost_dice: weight of the dice cost.
            num_points: points sampled per image for the mask costs (> 0).
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are zero")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, h, w] (logits).
            targets: B dicts with ``labels`` [n_b] long and ``masks`` [n_b, H, W] binary.

        Returns:
            B pairs ``(query_indices, target_indices)``, int64 tensors of length
            min(Q, n_b): query ``query_indices[j]`` is assigned to target ``target_indices[j]``.
        """
        indices = []
        for b, target in enumerate(targets):
            cost = self._cost_matrix(
                outputs["pred_logits"][b],
                outputs["pred_masks"][b],
                target["labels"],
                target["masks"],
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def _cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_masks: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            logits: [Q, K+1] class logits of one image.
            masks: [Q, h, w] mask logits.
            tgt_labels: [n] target classes.
            tgt_masks: [n, H, W] binary target masks.

        Returns:
            [Q, n] weighted matching cost.
        """
        cost_class = -logits.float().softmax(-1)[:, tgt_labels]
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        with torch.autocast(device_type=masks.device.type, enabled=False):
            pred_points = point_sample(
                masks[:, None].float(), coords.expand(masks.shape[0], -1, -1), align_corners=False
            )
            tgt_points = point_sample(
                tgt_masks[:, None].float(),
                coords.expand(tgt_masks.shape[0], -1, -1),
                align_corners=False,
            )
            pred_points, tgt_points = pred_points[:, 0], tgt_points[:, 0]
            cost_mask = batch_sigmoid_ce_cost(pred_points, tgt_points)
            cost_dice = batch_dice_cost(pred_points, tgt_points)
        return (
            self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice
        )
