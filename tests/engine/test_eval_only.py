"""``train_net.py --eval-only`` end to end: trained tiny weights, the synthetic night test split.

The command runs as a user runs it (a child process, from another directory, the data in a
temporary ``DETECTRON2_DATASETS``). Its mIoU must equal the one computed here by hand from the
same weights' predictions and the label PNGs, and be well above what predicting the most frequent
class everywhere scores.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from trained_tiny import predict_labels, synthetic_test_inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASET = "synth_rgbt_test_night"  # 100 images of 160x120
NUM_CLASSES = 9


def _miou(conf: np.ndarray) -> float:
    """Mean IoU in percent over the classes present in prediction or ground truth."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return 100.0 * float(np.mean(tp[union > 0] / union[union > 0]))


def _confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    valid = gt != 255
    return np.bincount(NUM_CLASSES * gt[valid].astype(np.int64) + pred[valid],
                       minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


@pytest.mark.slow
def test_eval_only_scores_the_trained_weights(trained_tiny, tmp_path):
    out = tmp_path / "eval"
    command = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only",
        "--config-file", trained_tiny["config_file"],
        "MODEL.WEIGHTS", trained_tiny["weights"], "DATASETS.TEST", f"('{DATASET}',)", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = {**os.environ, "DETECTRON2_DATASETS": trained_tiny["datasets_root"]}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    report_dir = out / "inference" / DATASET
    for name in ("results.json", "metrics.csv", "table.md", "confusion_matrix.png"):
        assert (report_dir / name).is_file(), name
    report = json.loads((report_dir / "results.json").read_text())
    assert report["num_images"]["all"] == report["num_images"]["night"] == 100
    miou = report["metrics"]["sem_seg"]["mIoU"]
    assert report["metrics"]["sem_seg_night"]["mIoU"] == pytest.approx(miou)

    # the same weights in this process, scored by hand against the label files
    dicts = DatasetCatalog.get(DATASET)
    preds = predict_labels(trained_tiny.model(), synthetic_test_inputs(trained_tiny.cfg(), DATASET, len(dicts)))
    gts = [cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED) for d in dicts]
    conf = sum(_confusion(gt, pred) for gt, pred in zip(gts, preds))
    assert np.array_equal(np.asarray(report["confusion_matrix"]["all"]), conf)
    assert miou == pytest.approx(_miou(conf), abs=1e-6)
    # chance level: the most frequent class everywhere
    frequent = int(np.argmax(sum(np.bincount(gt[gt != 255].ravel(), minlength=NUM_CLASSES) for gt in gts)))
    chance = _miou(sum(_confusion(gt, np.full(gt.shape, frequent, dtype=np.int64)) for gt in gts))
    assert miou > 2 * chance, (miou, chance)
