"""Panoptic and instance outputs of the Mask2Former head, and training with per-segment targets.

Expected values are worked out by hand on 2-4 queries and tiny masks: class logits are
``log(probabilities)`` so that the softmax gives those probabilities back.
"""
import math

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.visualizer import Visualizer

from conftest import rgbt_pair
from hapnet_d2.modeling.instance_targets import instances_to_mask_targets
from hapnet_d2.modeling.postprocessing import instance_inference, panoptic_inference

# 3 classes: 0 "road" (stuff), 1 "car" (thing), 2 "sky" (stuff); column 3 = no object
THINGS = (1,)
BIG = 10.0  # mask logit: sigmoid(10) = 0.99995, sigmoid(-10) = 0.00005


def cls(*probs):
    """Class logits [len(probs), 4] whose softmax is the given rows of probabilities."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def masks_from(*grids, on=BIG, off=-BIG):
    """Mask logits [Q, H, W] from 0/1 grids (1 -> ``on``, 0 -> ``off``)."""
    grid = torch.tensor(grids, dtype=torch.float32)
    return torch.where(grid > 0, torch.tensor(on), torch.tensor(off))


def panoptic(mask_cls, mask_pred, object_mask_threshold=0.8, overlap_threshold=0.8):
    return panoptic_inference(
        mask_cls,
        mask_pred,
        thing_ids=THINGS,
        object_mask_threshold=object_mask_threshold,
        overlap_threshold=overlap_threshold,
    )


# ---------------------------------------------------------------- panoptic
def test_object_mask_threshold_and_no_object_drop_queries():
    mask_cls = cls(
        [0.02, 0.90, 0.02, 0.06],  # car 0.90 > 0.8: kept
        [0.10, 0.70, 0.10, 0.10],  # car 0.70: below the threshold
        [0.01, 0.02, 0.02, 0.95],  # "no object"
        [0.75, 0.10, 0.10, 0.05],  # road 0.75: below the threshold
    )
    mask_pred = masks_from(
        [[1, 1, 0], [0, 0, 0]],
        [[0, 0, 1], [0, 0, 0]],
        [[1, 1, 1], [1, 1, 1]],  # would cover everything, were it not "no object"
        [[0, 0, 0], [1, 1, 1]],
    )
    ids, info = panoptic(mask_cls, mask_pred)
    assert ids.dtype == torch.int32 and ids.shape == (2, 3)
    assert ids.tolist() == [[1, 1, 0], [0, 0, 0]]  # void wherever no kept query claims a pixel
    assert info == [{"id": 1, "isthing": True, "category_id": 1}]
    # a lower threshold keeps the second car and the road (row 2), in query order
    ids, info = panoptic(mask_cls, mask_pred, object_mask_threshold=0.5)
    assert ids.tolist() == [[1, 1, 2], [3, 3, 3]]
    assert [s["category_id"] for s in info] == [1, 1, 0]


def test_nothing_kept_gives_all_void():
    ids, info = panoptic(cls([0.3, 0.3, 0.3, 0.1]), masks_from([[1, 1], [1, 1]]))
    assert info == [] and ids.tolist() == [[0, 0], [0, 0]]


def test_overlap_threshold_drops_a_query_that_loses_its_mask():
    # A (car 0.9) and B (car 0.85) both claim the middle two pixels; A's prob 0.9 wins them.
    # B's own mask: 4 pixels, won: 2 -> 2/4 = 0.5 < 0.8 -> dropped; its other 2 pixels are void.
    mask_cls = cls([0.04, 0.90, 0.03, 0.03], [0.05, 0.85, 0.05, 0.05])
    mask_pred = masks_from([[1, 1, 1, 0, 0]], [[0, 1, 1, 1, 1]])
    ids, info = panoptic(mask_cls, mask_pred)
    assert ids.tolist() == [[1, 1, 1, 0, 0]]
    assert info == [{"id": 1, "isthing": True, "category_id": 1}]
    # at threshold 0.5 B survives with the pixels it won
    ids, info = panoptic(mask_cls, mask_pred, overlap_threshold=0.5)
    assert ids.tolist() == [[1, 1, 1, 2, 2]] and len(info) == 2


def test_overlap_area_is_the_won_area_not_its_intersection_with_the_mask():
    """Mask2Former compares the area a query wins by argmax (low-sigmoid pixels included) to
    its own sigmoid >= 0.5 area; only the pixels it keeps are cut to sigmoid >= 0.5."""
    low = math.log(0.4 / 0.6)  # sigmoid = 0.4
    # A: own mask = pixels 0-3; B is stronger on pixels 0-1; A also wins pixels 4-5 with 0.4
    a = torch.tensor([[BIG, BIG, BIG, BIG, low, low, -BIG]])
    b = torch.tensor([[BIG, BIG, -BIG, -BIG, -BIG, -BIG, -BIG]])
    mask_cls = cls([0.04, 0.85, 0.03, 0.08], [0.02, 0.95, 0.02, 0.01])  # B scores higher
    ids, info = panoptic(mask_cls, torch.stack([a, b]))
    # A: won 4 pixels (2, 3, 4, 5) / own 4 = 1.0 -> kept with pixels 2, 3; B: won 2 / own 2
    assert ids.tolist() == [[2, 2, 1, 1, 0, 0, 0]]
    assert [s["id"] for s in info] == [1, 2]


def test_stuff_queries_merge_into_one_segment_per_class_things_do_not():
    mask_cls = cls(
        [0.90, 0.05, 0.03, 0.02],  # road
        [0.02, 0.92, 0.03, 0.03],  # car
        [0.91, 0.03, 0.03, 0.03],  # road again
        [0.03, 0.93, 0.02, 0.02],  # a second car
        [0.02, 0.02, 0.94, 0.02],  # sky
    )
    mask_pred = masks_from(
        [[0, 0, 0], [0, 0, 0], [1, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 1, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 1]],
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[1, 1, 1], [0, 0, 0], [0, 0, 0]],
    )
    ids, info = panoptic(mask_cls, mask_pred)
    assert ids.tolist() == [[4, 4, 4], [3, 3, 3], [1, 2, 1]]
    assert info == [
        {"id": 1, "isthing": False, "category_id": 0},
        {"id": 2, "isthing": True, "category_id": 1},
        {"id": 3, "isthing": True, "category_id": 1},
        {"id": 4, "isthing": False, "category_id": 2},
    ]


def test_pixels_below_half_of_the_winner_are_void():
    mask_cls = cls([0.02, 0.95, 0.02, 0.01])
    mask_pred = torch.tensor([[[BIG, BIG, BIG, BIG, math.log(0.45 / 0.55)]]])
    ids, _ = panoptic(mask_cls, mask_pred)
    assert ids.tolist() == [[1, 1, 1, 1, 0]]


# ---------------------------------------------------------------- instances
def instances(mask_cls, mask_pred, topk=100, has_stuff=True, thing_ids=THINGS):
    return instance_inference(
        mask_cls, mask_pred, num_classes=3, thing_ids=thing_ids, has_stuff=has_stuff, topk=topk
    )


def test_instance_topk_over_query_class_pairs_and_thing_filter():
    mask_cls = cls(
        [0.10, 0.60, 0.20, 0.10],
        [0.50, 0.30, 0.15, 0.05],
        [0.05, 0.05, 0.80, 0.10],
    )
    mask_pred = masks_from([[1, 0]], [[0, 1]], [[1, 1]])
    # all 9 (query, class) scores, the 4 largest: (2, sky) .80, (0, car) .60, (1, road) .50,
    # (1, car) .30; with stuff in the dataset only the cars stay, in score order
    result = instances(mask_cls, mask_pred, topk=4)
    assert result.pred_classes.tolist() == [1, 1]
    class_scores = torch.tensor([0.60, 0.30])
    torch.testing.assert_close(result.pred_masks, torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    # one mask pixel each, sigmoid(10) inside
    torch.testing.assert_close(result.scores, class_scores * torch.sigmoid(torch.tensor(BIG)))
    # a dataset without stuff keeps every class
    everything = instances(mask_cls, mask_pred, topk=4, has_stuff=False)
    assert everything.pred_classes.tolist() == [2, 1, 0, 1]
    # top-k is capped at Q x K
    assert len(instances(mask_cls, mask_pred, topk=100, has_stuff=False)) == 9


def test_instance_mask_score_is_class_score_times_mean_sigmoid_inside_the_mask():
    logits = torch.tensor([[[2.0, 0.5, -1.0], [-3.0, 1.0, 0.0]]])  # 0.0 is not > 0: outside
    result = instances(cls([0.05, 0.90, 0.03, 0.02]), logits, topk=1)
    inside = torch.sigmoid(torch.tensor([2.0, 0.5, 1.0]))
    assert result.pred_masks.tolist() == [[[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]
    torch.testing.assert_close(result.scores, 0.90 * inside.mean()[None], rtol=1e-5, atol=1e-6)
    # box of pixels (x 0..1, y 0..1): Detectron2's convention x1 = last column + 1
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    assert result.image_size == (2, 3)


def test_instance_boxes_from_masks_and_empty_masks():
    mask_pred = torch.full((2, 4, 5), -BIG)
    mask_pred[0, 1:3, 2:5] = BIG
    result = instances(cls([0.05, 0.9, 0.03, 0.02], [0.05, 0.8, 0.1, 0.05]), mask_pred, topk=6)
    assert result.pred_classes.tolist() == [1, 1]
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))
    assert result.scores[1] == 0  # an empty mask scores 0


# ---------------------------------------------------------------- targets
def test_instance_targets_are_padded_like_the_images():
    inst = Instances((2, 3))
    inst.gt_classes = torch.tensor([1, 0])
    inst.gt_masks = BitMasks(torch.tensor([[[1, 0, 0], [1, 1, 0]], [[0, 1, 1], [0, 0, 1]]], dtype=torch.bool))
    (target,) = instances_to_mask_targets([inst], (4, 4), num_classes=3)
    assert target["labels"].tolist() == [1, 0] and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (2, 4, 4) and target["masks"].dtype == torch.float32
    assert target["masks"][0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert target["masks"].sum() == 6  # nothing in the padding


def test_instance_targets_reject_bad_classes_and_sizes():
    inst = Instances((2, 2))
    inst.gt_classes = torch.tensor([3])
    inst.gt_masks = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'a.png': instance classes \[3\] are not class ids in \[0, 3\)"):
        instances_to_mask_targets([inst], (2, 2), 3, file_names=["a.png"])
    inst.gt_classes = torch.tensor([0])
    with pytest.raises(ValueError, match=r"'a.png': instance masks are \(2, 2\) but the image is \(2, 4\)"):
        instances_to_mask_targets([inst], (2, 4), 3, file_names=["a.png"], image_sizes=[(2, 4)])


# ---------------------------------------------------------------- the model
def _segment_pair(size: int = 64):
    """Stuff bands and two separate 'car' boxes of class 1; RGB and thermal follow the label."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = torch.where(yy < size // 2, 0, 2)
    label[8:24, 8:24] = 1
    label[40:56, 36:60] = 1
    palette = torch.tensor([[20, 20, 20], [200, 30, 30], [30, 30, 200]])
    image = palette[label].permute(2, 0, 1).to(torch.uint8)
    cars = torch.zeros(2, size, size, dtype=torch.bool)
    cars[0, 8:24, 8:24] = True
    cars[1, 40:56, 36:60] = True
    segments = torch.cat([(label == 0)[None], cars, (label == 2)[None]])
    inst = Instances((size, size))
    inst.gt_classes = torch.tensor([0, 1, 1, 2])
    inst.gt_masks = BitMasks(segments)
    return {"image": image, "thermal": (label * 100).float()[None], "sem_seg": label, "instances": inst,
            "height": size, "width": size, "file_name": "pattern.png"}


@pytest.fixture
def panoptic_metadata():
    name = "_test_panoptic_inference_meta"
    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={2: 1},
        stuff_dataset_id_to_contiguous_id={i + 1: i for i in range(9)},
        # Mask2Former's convention: thing_ and stuff_ lists both name ALL classes (contiguous ids)
        stuff_classes=[f"class{i}" for i in range(9)],
        thing_classes=[f"class{i}" for i in range(9)],
    )
    yield name
    MetadataCatalog.remove(name)


def _panoptic_cfg(tiny_cfg, name):
    tiny_cfg.DATASETS.TEST = (name,)
    tiny_cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    tiny_cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    return tiny_cfg


def test_thing_ids_come_from_the_test_dataset_metadata(tiny_cfg, panoptic_metadata):
    model = build_model(_panoptic_cfg(tiny_cfg, panoptic_metadata))
    assert model.thing_ids == (1,) and model.has_stuff
    tiny_cfg.DATASETS.TEST = ("synth_rgbt_test",)  # a semantic dataset
    with pytest.raises(ValueError, match="dataset 'synth_rgbt_test' has no panoptic metadata"):
        build_model(tiny_cfg)


def test_panoptic_training_losses_fall(tiny_cfg):
    torch.manual_seed(0)
    tiny_cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    model = build_model(tiny_cfg).train()
    batch = [_segment_pair(), _segment_pair()]
    # one target per segment, not per class: 4 targets, two of them cars
    targets = model._segment_targets(batch, model._batch(batch)[0])
    assert [t["labels"].tolist() for t in targets] == [[0, 1, 1, 2]] * 2
    seen = []
    criterion_forward = model.criterion.forward
    model.criterion.forward = lambda outputs, targets: seen.append(targets) or criterion_forward(outputs, targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-2:]) < 0.8 * sum(history[:2]), history
    # the criterion got the per-segment targets (the two cars apart), not one mask per class
    assert [t["labels"].tolist() for t in seen[0]] == [[0, 1, 1, 2]] * 2
    assert seen[0][0]["masks"][1].sum() == 16 * 16


def test_training_with_an_image_without_segments(tiny_cfg):
    model = build_model(tiny_cfg).train()
    empty = _segment_pair()
    empty["instances"] = Instances((64, 64), gt_classes=torch.zeros(0, dtype=torch.int64),
                                   gt_masks=BitMasks(torch.zeros(0, 64, 64, dtype=torch.bool)))
    losses = model([_segment_pair(), empty])
    assert all(torch.isfinite(v) for v in losses.values())


def _check_panoptic(panoptic_seg, size):
    ids, info = panoptic_seg
    assert ids.dtype == torch.int32 and tuple(ids.shape) == size
    present = set(torch.unique(ids).tolist()) - {0}
    assert present == {s["id"] for s in info}
    assert [s["id"] for s in info] == list(range(1, len(info) + 1))


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_panoptic_and_instance_outputs_at_the_output_size(tiny_cfg, panoptic_metadata, mode):
    torch.manual_seed(0)
    cfg = _panoptic_cfg(tiny_cfg, panoptic_metadata)
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0  # untrained: keep queries anyway
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.TEST.MODE = mode
    cfg.TEST.SLIDE_CROP = (64, 64)
    cfg.TEST.SLIDE_STRIDE = (48, 48)
    model = build_model(cfg).eval()
    x = rgbt_pair(70, 90)
    del x["sem_seg"]
    with torch.no_grad():
        out = model([dict(x, height=35, width=45)])[0]
    assert set(out) == {"sem_seg", "panoptic_seg", "instances"}
    assert out["sem_seg"].shape == (9, 35, 45)
    _check_panoptic(out["panoptic_seg"], (35, 45))
    assert len(out["panoptic_seg"][1]) > 0
    inst = out["instances"]
    assert inst.image_size == (35, 45) and inst.pred_masks.shape[1:] == (35, 45)
    assert set(inst.pred_classes.tolist()) <= {1}  # things only
    assert len(inst) == (inst.pred_classes == 1).sum() > 0


def test_slide_equals_whole_for_panoptic_when_one_window(tiny_cfg, panoptic_metadata):
    cfg = _panoptic_cfg(tiny_cfg, panoptic_metadata)
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.TEST.SLIDE_CROP = (64, 64)
    model = build_model(cfg).eval()
    x = rgbt_pair(64, 64)
    with torch.no_grad():
        model.test_mode = "whole"
        whole = model([x])[0]
        model.test_mode = "slide"
        slide = model([x])[0]
    assert torch.equal(whole["panoptic_seg"][0], slide["panoptic_seg"][0])
    assert whole["panoptic_seg"][1] == slide["panoptic_seg"][1]
    torch.testing.assert_close(whole["instances"].scores, slide["instances"].scores)


def test_semantic_output_unchanged_by_panoptic_flags(tiny_cfg, panoptic_metadata):
    torch.manual_seed(0)
    semantic = build_model(tiny_cfg).eval()
    cfg = _panoptic_cfg(tiny_cfg.clone(), panoptic_metadata)
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    both = build_model(cfg).eval()
    both.load_state_dict(semantic.state_dict())
    x = rgbt_pair(64, 64)
    with torch.no_grad():
        out = both([x])[0]
        assert "sem_seg" not in out and "panoptic_seg" in out
        with both.semantic_only():
            assert set(both([x])[0]) == {"sem_seg"}
            assert torch.equal(both([x])[0]["sem_seg"], semantic([x])[0]["sem_seg"])
        assert "panoptic_seg" in both([x])[0]


def test_tta_returns_semantic_scores_of_a_panoptic_model(tiny_cfg, panoptic_metadata):
    from hapnet_d2.test_time_augmentation import SemanticSegmentorWithTTA

    cfg = _panoptic_cfg(tiny_cfg, panoptic_metadata)
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    model = build_model(cfg).eval()
    tta = SemanticSegmentorWithTTA(model=model, scales=[1.0], flip=True)
    x = rgbt_pair(64, 64)
    (out,) = tta([x])
    assert set(out) == {"sem_seg"} and out["sem_seg"].shape == (9, 64, 64)
    assert model.panoptic_on and not model.semantic_on  # flags restored


def test_visualizer_draws_the_panoptic_output(panoptic_metadata):
    mask_cls = torch.full((3, 10), -5.0)
    mask_cls[0, 0] = mask_cls[1, 1] = mask_cls[2, 2] = 5.0  # stuff 0, car (1), stuff 2
    mask_pred = torch.full((3, 8, 8), -BIG)
    mask_pred[0, :4] = BIG
    mask_pred[1, 4:, :4] = BIG
    mask_pred[2, 4:, 4:] = BIG
    ids, info = panoptic_inference(mask_cls, mask_pred, thing_ids=(1,), object_mask_threshold=0.8,
                                   overlap_threshold=0.8)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [(1, 0, False), (2, 1, True), (3, 2, False)]
    vis = Visualizer(np.zeros((8, 8, 3), np.uint8), MetadataCatalog.get(panoptic_metadata))
    image = vis.draw_panoptic_seg(ids, info).get_image()
    assert image.shape == (8, 8, 3) and image.any()


def test_slide_merges_query_logits_over_windows_and_masks_over_covering_windows(tiny_cfg):
    """Windows of a 64 x 96 image at crop 64, stride 32: x 0-63 and 32-95. Window w predicts
    class logits w + 1 and mask logits 10 (w + 1) everywhere."""
    tiny_cfg.TEST.SLIDE_CROP = (64, 64)
    tiny_cfg.TEST.SLIDE_STRIDE = (32, 32)
    model = build_model(tiny_cfg).eval()
    num_queries = tiny_cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES

    def fake_whole_outputs(rgb, thermal, queries=False):
        n = rgb.shape[0]
        level = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None]
        return {
            "sem_seg": level.expand(n, 9, 64, 64).clone(),
            "pred_logits": level[:, :, :, 0].expand(n, num_queries, 10).clone(),
            "pred_masks": (10 * level).expand(n, num_queries, 64, 64).clone(),
        }

    model._whole_outputs = fake_whole_outputs
    out = model._slide_outputs(torch.zeros(1, 3, 64, 96), torch.zeros(1, 3, 64, 96), queries=True)
    assert out["pred_logits"].shape == (1, num_queries, 10) and out["pred_masks"].shape == (1, num_queries, 64, 96)
    torch.testing.assert_close(out["pred_logits"], torch.full((1, num_queries, 10), 1.5))
    masks = out["pred_masks"][0, 0]
    assert masks[:, :32].eq(10).all() and masks[:, 32:64].eq(15).all() and masks[:, 64:].eq(20).all()
    assert out["sem_seg"][0, 0, 0].tolist()[::32] == [1.0, 1.5, 2.0]
