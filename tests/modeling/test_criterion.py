import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from hapnet_d2.modeling.matcher import HungarianMatcher
from hapnet_d2.modeling.semantic_targets import semantic_inference, semantic_to_mask_targets
from hapnet_d2.ops import kernel_available


def _criterion(matcher, num_classes=3, num_points=32):
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=0.1,
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def _fixed_matcher(indices):
    pairs = [(torch.tensor(q), torch.tensor(t)) for q, t in indices]
    return lambda outputs, targets: pairs


def test_loss_names_count_and_weights_from_config():
    torch.manual_seed(0)
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 64
    criterion = SetCriterion(cfg)

    def prediction():
        return {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 8, 8)}

    outputs = dict(prediction(), aux_outputs=[prediction() for _ in range(9)])
    sem_seg = torch.randint(0, 3, (2, 32, 32))
    losses = criterion(outputs, semantic_to_mask_targets(sem_seg, 3, 255))

    expected = {"loss_ce", "loss_mask", "loss_dice"}
    expected |= {f"{k}_{i}" for k in ("loss_ce", "loss_mask", "loss_dice") for i in range(9)}
    assert set(losses) == expected
    assert len(losses) == 30
    assert set(criterion.weight_dict) == expected
    for name, weight in criterion.weight_dict.items():
        assert weight == {"ce": 2.0, "mask": 5.0, "dice": 5.0}[name.split("_")[1]]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert criterion.empty_weight.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.1])


def test_class_loss_weights_no_object():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4)
    targets = [{"labels": torch.tensor([2]), "masks": torch.ones(1, 8, 8)}]
    criterion = _criterion(_fixed_matcher([([1], [0])]))
    loss = criterion.loss_labels(logits, targets, criterion.matcher(None, None))
    log_probs = logits[0].log_softmax(-1)
    # query 1 -> class 2 (weight 1); queries 0 and 2 -> no-object (index 3, weight 0.1)
    expected = -(log_probs[1, 2] + 0.1 * log_probs[0, 3] + 0.1 * log_probs[2, 3]) / 1.2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_point_losses_closed_form():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-0.5, -0.5, -0.5, -0.5]])
    targets = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    p0, p1 = torch.sigmoid(torch.tensor([1.0, -0.5])).tolist()
    expected_bce = (
        F.softplus(torch.tensor(-1.0))
        + F.softplus(torch.tensor(-0.5)) / 2
        + 0.5 * F.softplus(torch.tensor(0.5))
    ).item()
    assert sigmoid_ce_loss(logits, targets, num_masks=4).item() == pytest.approx(expected_bce / 4)
    expected_dice = (1 - (8 * p0 + 1) / (4 * p0 + 5)) + (1 - (4 * p1 + 1) / (4 * p1 + 3))
    assert dice_loss(logits, targets, num_masks=4).item() == pytest.approx(expected_dice / 4)


def test_mask_losses_use_matched_queries_and_target_count():
    """Against the same point sampling (same seed) done by hand on the matched pairs."""
    torch.manual_seed(0)
    masks = torch.randn(2, 4, 6, 6)
    targets = [
        {"labels": torch.tensor([1, 0]), "masks": (torch.rand(2, 24, 24) > 0.5).float()},
        {"labels": torch.tensor([2]), "masks": (torch.rand(1, 24, 24) > 0.5).float()},
    ]
    criterion = _criterion(_fixed_matcher([([0, 2], [1, 0]), ([3], [0])]), num_points=40)
    outputs = {"pred_logits": torch.zeros(2, 4, 4), "pred_masks": masks}
    torch.manual_seed(1)
    losses = criterion(outputs, targets)

    src = torch.stack([masks[0, 0], masks[0, 2], masks[1, 3]])[:, None]
    tgt = torch.stack([targets[0]["masks"][1], targets[0]["masks"][0], targets[1]["masks"][0]])
    torch.manual_seed(1)
    coords = get_uncertain_point_coords_with_randomness(src, lambda x: -x.abs(), 40, 3.0, 0.75)
    point_logits = point_sample(src, coords, align_corners=False)[:, 0]
    point_labels = point_sample(tgt[:, None], coords, align_corners=False)[:, 0]
    bce = sum(
        F.binary_cross_entropy_with_logits(point_logits[i], point_labels[i]) for i in range(3)
    )
    assert losses["loss_mask"].item() == pytest.approx(bce.item() / 3, rel=1e-5)
    probs = point_logits.sigmoid()
    dice = 1 - (2 * (probs * point_labels).sum(1) + 1) / (probs.sum(1) + point_labels.sum(1) + 1)
    assert losses["loss_dice"].item() == pytest.approx(dice.sum().item() / 3, rel=1e-5)


def test_batch_without_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    masks = torch.randn(2, 5, 8, 8, requires_grad=True)
    targets = semantic_to_mask_targets(torch.full((2, 16, 16), 255), 3, 255)
    criterion = _criterion(
        HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=8)
    )
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, targets)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    expected_ce = F.cross_entropy(logits.reshape(-1, 4), torch.full((10,), 3))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert masks.grad is not None and logits.grad is not None


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from threads, and on a busy machine they slow down a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_loss_falls_when_fitting_a_tiny_head(single_thread):
    torch.manual_seed(0)
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.MODEL.HAPNET.MSDA_IMPL = "auto" if kernel_available() else "pytorch"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 2
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    shapes = {f"res{i}": ShapeSpec(channels=16, stride=2**i) for i in range(2, 6)}
    head = build_sem_seg_head(cfg, shapes).train()
    criterion = SetCriterion(cfg)
    assert len(criterion.weight_dict) == 3 * 4

    features = {f"res{i}": torch.randn(2, 16, 64 // 2**i, 64 // 2**i) for i in range(2, 6)}
    sem_seg = torch.zeros(2, 64, 64, dtype=torch.long)
    sem_seg[0, :, 32:] = 1
    sem_seg[1, 16:48, 16:48] = 2
    sem_seg[1, :4] = 255
    targets = semantic_to_mask_targets(sem_seg, 3, 255)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def total_loss():
        losses = criterion(head(features), targets)
        return sum(losses[k] * w for k, w in criterion.weight_dict.items())

    history = []
    for _ in range(40):
        loss = total_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5


def test_semantic_to_mask_targets_values():
    sem_seg = torch.tensor([[[0, 0, 255], [2, 2, 0]], [[255, 255, 255], [255, 255, 255]]])
    first, second = semantic_to_mask_targets(sem_seg, num_classes=3, ignore_value=255)
    assert first["labels"].dtype == torch.int64
    assert first["labels"].tolist() == [0, 2]
    assert first["masks"].dtype == torch.float32
    assert first["masks"].tolist() == [[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]]
    assert second["labels"].numel() == 0
    assert second["masks"].shape == (0, 2, 3)


def test_semantic_to_mask_targets_names_bad_labels():
    sem_seg = torch.tensor([[[0, 9, 255], [12, 2, 0]]])
    with pytest.raises(ValueError, match=r"image 0 of the batch: label values \[9, 12\]"):
        semantic_to_mask_targets(sem_seg, num_classes=9, ignore_value=255)
    with pytest.raises(ValueError, match=r"'labels/00001D.png': label values \[9, 12\]"):
        semantic_to_mask_targets(sem_seg, 9, 255, file_names=["labels/00001D.png"])
    with pytest.raises(ValueError, match="integer"):
        semantic_to_mask_targets(sem_seg.float(), 9, 255)


def test_semantic_inference_matches_explicit_sum():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(4, 4), torch.randn(4, 5, 6)
    scores = semantic_inference(mask_cls, mask_pred)
    assert scores.shape == (3, 5, 6)
    probs = mask_cls.softmax(-1)
    expected = sum(probs[q, :3, None, None] * mask_pred[q].sigmoid()[None] for q in range(4))
    assert torch.allclose(scores, expected, atol=1e-6)
    assert math.isclose(scores.sum().item(), expected.sum().item(), rel_tol=1e-5)
