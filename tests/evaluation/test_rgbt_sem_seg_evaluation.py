"""The evaluator's scores against an independent pixel-by-pixel computation."""

import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import launch

from hapnet_d2.evaluation import RGBTSemSegEvaluator, metrics_from_confusion

CLASSES = ["unlabeled", "car", "person", "bike"]
DATASET = "test_eval_rgbt_daynight"


def _reference(pairs, num_classes):
    """Per-class ACC/IoU and means by plain counting over (gt, pred) pixel pairs."""
    tp, gt_n, pred_n, total, correct = [0] * num_classes, [0] * num_classes, [0] * num_classes, 0, 0
    for g, p in pairs:
        if g == 255:
            continue
        total += 1
        gt_n[g] += 1
        pred_n[p] += 1
        if g == p:
            tp[g] += 1
            correct += 1
    acc = [tp[c] / gt_n[c] if gt_n[c] else None for c in range(num_classes)]
    ious = []
    for c in range(num_classes):
        union = gt_n[c] + pred_n[c] - tp[c]
        ious.append(tp[c] / union if union else None)
    mean = lambda xs: 100 * sum(x for x in xs if x is not None) / sum(x is not None for x in xs)
    return {
        "acc": acc,
        "iou": ious,
        "mACC": mean(acc),
        "mIoU": mean(ious),
        "pACC": 100 * correct / total,
    }


def _assert_matches(metrics, ref, class_names):
    for c, name in enumerate(class_names):
        for key, values in (("ACC", ref["acc"]), ("IoU", ref["iou"])):
            if values[c] is None:
                assert math.isnan(metrics[f"{key}-{name}"])
            else:
                assert metrics[f"{key}-{name}"] == pytest.approx(100 * values[c], abs=1e-6)
    for key in ("mACC", "mIoU", "pACC"):
        assert metrics[key] == pytest.approx(ref[key], abs=1e-6)


def test_metrics_from_hand_made_confusion():
    # rows = ground truth, cols = prediction; class 3 absent from both, class 2 never in
    # the ground truth but predicted once (no ACC, IoU 0)
    conf = np.array([[5, 1, 0, 0], [2, 7, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    pairs = [(g, p) for g in range(4) for p in range(4) for _ in range(conf[g, p])]
    metrics = metrics_from_confusion(conf, CLASSES)
    _assert_matches(metrics, _reference(pairs, 4), CLASSES)
    assert math.isnan(metrics["IoU-bike"]) and math.isnan(metrics["ACC-person"])
    assert metrics["IoU-person"] == 0.0
    assert metrics["mIoU"] == pytest.approx(100 * (5 / 8 + 7 / 11 + 0) / 3, abs=1e-9)
    assert metrics["mACC"] == pytest.approx(100 * (5 / 6 + 7 / 10) / 2, abs=1e-9)


def _register():
    if DATASET not in MetadataCatalog.list():
        MetadataCatalog.get(DATASET).set(
            stuff_classes=CLASSES, ignore_label=255, has_day_night=True
        )


def _samples(seed=0, count=6):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        gt = rng.integers(0, 3, (5, 7))  # class 3 (bike) never appears
        gt[rng.random((5, 7)) < 0.2] = 255
        scores = torch.rand(len(CLASSES), 5, 7, generator=torch.Generator().manual_seed(i))
        condition = "day" if i % 3 else "night"
        samples.append(
            ({"sem_seg": torch.as_tensor(gt), "condition": condition}, {"sem_seg": scores})
        )
    return samples


def _pairs(samples, condition=None):
    return [
        (int(g), int(p))
        for inp, out in samples
        if condition in (None, inp["condition"])
        for g, p in zip(inp["sem_seg"].flatten(), out["sem_seg"].argmax(0).flatten())
    ]


def test_evaluator_overall_day_night_and_reports(tmp_path):
    _register()
    samples = _samples()
    evaluator = RGBTSemSegEvaluator(DATASET, distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    for inp, out in samples:
        evaluator.process([inp], [out])
    results = evaluator.evaluate()
    assert set(results) == {"sem_seg", "sem_seg_day", "sem_seg_night"}
    _assert_matches(results["sem_seg"], _reference(_pairs(samples), 4), CLASSES)
    _assert_matches(results["sem_seg_day"], _reference(_pairs(samples, "day"), 4), CLASSES)
    _assert_matches(results["sem_seg_night"], _reference(_pairs(samples, "night"), 4), CLASSES)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    assert saved["num_images"] == {"all": 6, "day": 4, "night": 2}
    table = (tmp_path / "table.md").read_text()
    assert "car Acc" in table and "unlabeled" not in table and "night (2 images)" in table
    assert (tmp_path / "metrics.csv").read_text().startswith("subset,class,ACC,IoU")
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluator_reads_label_file_and_rejects_bad_ids(tmp_path):
    from PIL import Image

    _register()
    gt = np.array([[0, 1], [255, 9]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    evaluator = RGBTSemSegEvaluator(DATASET, distributed=False)
    with pytest.raises(ValueError, match=r"gt.png: label ids \[9\] outside 0..3"):
        evaluator.process(
            [{"sem_seg_file_name": str(tmp_path / "gt.png")}], [{"sem_seg": torch.rand(4, 2, 2)}]
        )
    with pytest.raises(ValueError, match=r"gt.png: prediction .* differ in size"):
        evaluator.process(
            [{"sem_seg_file_name": str(tmp_path / "gt.png")}], [{"sem_seg": torch.rand(4, 3, 2)}]
        )


def _distributed_worker(output_file):
    from detectron2.utils import comm

    _register()
    samples = _samples()
    evaluator = RGBTSemSegEvaluator(DATASET, distributed=True)
    evaluator.reset()
    for inp, out in samples[comm.get_rank() :: comm.get_world_size()]:
        evaluator.process([inp], [out])
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(output_file, "w") as f:
            json.dump(
                {
                    k: {m: (None if math.isnan(v) else v) for m, v in r.items()}
                    for k, r in results.items()
                },
                f,
            )
    else:
        assert results is None
    # an orderly end: a rank leaving while its peer's gloo threads still talk to it aborts the
    # peer ("terminate called without an active exception", seen once in a full run)
    comm.synchronize()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_evaluator_gathers_across_two_processes(tmp_path):
    _register()
    single = RGBTSemSegEvaluator(DATASET, distributed=False)
    single.reset()
    for inp, out in _samples():
        single.process([inp], [out])
    expected = single.evaluate()
    output_file = str(tmp_path / "gathered.json")
    launch(_distributed_worker, 2, dist_url="auto", args=(output_file,))
    gathered = json.loads(open(output_file).read())
    assert set(gathered) == set(expected)
    for key, metrics in expected.items():
        for name, value in metrics.items():
            if math.isnan(value):
                assert gathered[key][name] is None
            else:
                assert gathered[key][name] == pytest.approx(value, abs=1e-9)
