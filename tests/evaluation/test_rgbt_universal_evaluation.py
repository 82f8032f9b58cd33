"""PQ + mask AP + mIoU in one report, on the synthetic panoptic data with hand-made predictions."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from hapnet_d2.data.datasets.register_synth import register_synth_panoptic_dataset
from hapnet_d2.data.panoptic_format import read_panoptic_png
from hapnet_d2.data.synth import SynthSpec, ensure_synth_dataset
from hapnet_d2.evaluation import RGBTUniversalEvaluator
from hapnet_d2.evaluation.rgbt_instance_evaluation import coco_mask_ap

TINY = SynthSpec(seed=7, num_train=0, num_val=0, num_test=4)
NAME = "test_universal_eval_synth"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets") / "synth_rgbt")
    ensure_synth_dataset(root, TINY)
    register_synth_panoptic_dataset(NAME, root, "test", TINY)
    yield DatasetCatalog.get(NAME)
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _outputs_from_ground_truth(d, drop_first_thing=False):
    """A prediction equal to the ground truth (optionally missing its first thing segment)."""
    ids = read_panoptic_png(d["pan_seg_file_name"])
    segments = [dict(s) for s in d["segments_info"]]
    if drop_first_thing:
        first = next(s for s in segments if s["isthing"])
        ids = np.where(ids == first["id"], 0, ids)
        segments = [s for s in segments if s is not first]
    label = np.array(Image.open(d["sem_seg_file_name"]))
    sem = torch.nn.functional.one_hot(torch.from_numpy(label).long(), 9).permute(2, 0, 1).float()
    things = [s for s in segments if s["isthing"]]
    inst = Instances(ids.shape)
    masks = torch.from_numpy(np.stack([ids == s["id"] for s in things])) if things else torch.zeros((0,) + ids.shape, dtype=torch.bool)
    inst.pred_masks = masks.float()
    inst.pred_boxes = Boxes(torch.zeros(len(things), 4))
    inst.scores = torch.ones(len(things))
    inst.pred_classes = torch.tensor([s["category_id"] for s in things], dtype=torch.int64)
    panoptic = (torch.from_numpy(ids.astype(np.int32)), [{"id": s["id"], "isthing": s["isthing"], "category_id": s["category_id"]} for s in segments])
    return {"sem_seg": sem, "panoptic_seg": panoptic, "instances": inst}


def test_perfect_predictions_score_100_everywhere(dataset, tmp_path):
    evaluator = RGBTUniversalEvaluator(NAME, str(tmp_path))
    evaluator.reset()
    for d in dataset:
        evaluator.process([d], [_outputs_from_ground_truth(d)])
    results = evaluator.evaluate()
    for key in ("panoptic_seg", "panoptic_seg_day", "panoptic_seg_night"):
        assert results[key]["PQ"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"panoptic_seg", "panoptic_seg_night", "segm", "sem_seg", "sem_seg_night"} <= set(saved["metrics"])
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| Subset | PQ | SQ | RQ |") and "Semantic segmentation (same model)" in table
    for name in ("panoptic_metrics.csv", "panoptic_pq_per_class.png", "confusion_matrix.png"):
        assert (tmp_path / name).is_file()


def test_a_missed_thing_is_one_false_negative(dataset, tmp_path):
    """Dropping one car/person/... segment from a perfect prediction: its class gets TP = n - 1,
    FN = 1, so RQ = (n - 1) / (n - 1 + 1/2) for that class, SQ stays 100."""
    evaluator = RGBTUniversalEvaluator(NAME, str(tmp_path), semantic_on=False, instance_on=False)
    evaluator.reset()
    first = next(d for d in dataset if any(s["isthing"] for s in d["segments_info"]))
    dropped = next(s for s in first["segments_info"] if s["isthing"])
    cls = MetadataCatalog.get(NAME).stuff_classes[dropped["category_id"]]
    n = sum(1 for d in dataset for s in d["segments_info"] if s["category_id"] == dropped["category_id"])
    for d in dataset:
        evaluator.process([d], [_outputs_from_ground_truth(d, drop_first_thing=d is first)])
    pq = evaluator.evaluate()["panoptic_seg"]
    assert pq[f"SQ-{cls}"] == pytest.approx(100.0)
    assert pq[f"RQ-{cls}"] == pytest.approx(100.0 * (n - 1) / (n - 1 + 0.5))


def test_coco_mask_ap_by_hand():
    """One ground-truth instance; a prediction with IoU 0.57 (true positive at IoU 0.50 and 0.55
    only) gives AP = 2/10 of the thresholds; a perfect one 100."""
    gt_mask = np.zeros((20, 20), bool)
    gt_mask[0:10, 0:10] = True  # 100 px
    pred_mask = np.zeros((20, 20), bool)
    pred_mask[0:10, 0:5] = True
    pred_mask[0:7, 5] = True  # 57 px, all inside: IoU 0.57
    import pycocotools.mask as mask_util

    def rle(m):
        r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    gt = [{"segmentation": rle(gt_mask), "area": 100.0, "bbox": [0, 0, 10, 10], "category_id": 1, "iscrowd": 0}]
    names = ["unlabeled", "car"]
    perfect = coco_mask_ap([(gt, [{"segmentation": rle(gt_mask), "score": 0.9, "category_id": 1}], (20, 20))], [1], names)
    assert perfect["AP"] == pytest.approx(100.0)
    partial = coco_mask_ap([(gt, [{"segmentation": rle(pred_mask), "score": 0.9, "category_id": 1}], (20, 20))], [1], names)
    assert partial["AP"] == pytest.approx(20.0) and partial["AP50"] == pytest.approx(100.0)
    assert partial["AP75"] == pytest.approx(0.0)
