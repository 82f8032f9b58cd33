import itertools

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost


def _halves(height=8, width=8):
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1
    return left, 1 - left


def test_known_assignment_from_masks_and_classes():
    """Query 2 predicts target 0 (class 1, left half), query 0 predicts target 1 (class 2,
    right half), query 1 predicts nothing: the matcher must find exactly that."""
    torch.manual_seed(0)
    left, right = _halves()
    logits = torch.full((1, 3, 4), -5.0)  # K = 3 classes + no-object
    logits[0, 0, 2] = 5.0
    logits[0, 1, 3] = 5.0
    logits[0, 2, 1] = 5.0
    masks = torch.stack([right, torch.zeros_like(left), left])[None] * 20 - 10
    targets = [{"labels": torch.tensor([1, 2]), "masks": torch.stack([left, right])}]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    ((queries, tgts),) = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
    assert queries.dtype == tgts.dtype == torch.int64
    assert queries.tolist() == [0, 2]
    assert tgts.tolist() == [1, 0]


def test_masks_decide_when_classes_tie():
    """Same class everywhere: only the mask costs can pick the right query for each target."""
    torch.manual_seed(0)
    left, right = _halves(16, 16)
    logits = torch.zeros(1, 2, 3)
    masks = torch.stack([left, right])[None] * 8 - 4  # query 0 = left, query 1 = right
    targets = [{"labels": torch.tensor([0, 0]), "masks": torch.stack([right, left])}]
    for cost_mask, cost_dice in [(1.0, 0.0), (0.0, 1.0)]:
        matcher = HungarianMatcher(
            cost_class=1.0, cost_mask=cost_mask, cost_dice=cost_dice, num_points=128
        )
        ((queries, tgts),) = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
        assert dict(zip(queries.tolist(), tgts.tolist())) == {0: 1, 1: 0}


def test_class_cost_assignment_is_globally_optimal():
    """Against brute force over all assignments; a greedy choice would be wrong here."""
    probs = torch.tensor(
        [
            [0.50, 0.45, 0.01, 0.04],
            [0.48, 0.02, 0.02, 0.48],
            [0.30, 0.30, 0.30, 0.10],
            [0.10, 0.10, 0.10, 0.70],
        ]
    )
    labels = torch.tensor([0, 1, 2])
    outputs = {"pred_logits": probs.log()[None], "pred_masks": torch.zeros(1, 4, 4, 4)}
    targets = [{"labels": labels, "masks": torch.zeros(3, 4, 4)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=8)
    ((queries, tgts),) = matcher(outputs, targets)
    total = probs[queries, labels[tgts]].sum().item()
    best = max(
        sum(probs[q, labels[t]].item() for t, q in enumerate(perm))
        for perm in itertools.permutations(range(4), 3)
    )
    assert total == pytest.approx(best)
    assert dict(zip(tgts.tolist(), queries.tolist())) == {0: 1, 1: 0, 2: 2}


def test_pairwise_costs_match_elementwise_losses():
    torch.manual_seed(0)
    inputs = torch.randn(5, 20)
    targets = (torch.rand(3, 20) > 0.5).float()
    ce = batch_sigmoid_ce_cost(inputs, targets)
    dice = batch_dice_cost(inputs, targets)
    assert ce.shape == dice.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            expected_ce = F.binary_cross_entropy_with_logits(inputs[i], targets[j])
            p = inputs[i].sigmoid()
            expected_dice = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
            assert ce[i, j].item() == pytest.approx(expected_ce.item(), rel=1e-5)
            assert dice[i, j].item() == pytest.approx(expected_dice.item(), rel=1e-5)


def test_image_without_targets_gets_no_match():
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 6, 6)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 24, 24)},
        {"labels": torch.tensor([3]), "masks": torch.ones(1, 24, 24)},
    ]
    indices = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=16)(
        outputs, targets
    )
    assert [len(q) for q, _ in indices] == [0, 1]


def test_from_config_uses_reference_weights():
    cfg = get_cfg()
    add_hapnet_config(cfg)
    matcher = HungarianMatcher(cfg)
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert matcher.num_points == 12544


def test_invalid_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="all costs are zero"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0, num_points=4)
    with pytest.raises(ValueError, match="num_points must be positive"):
        HungarianMatcher(num_points=0)
