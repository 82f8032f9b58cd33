"""tools/evaluate_predictions.py: PQ/SQ/RQ equal panopticapi's pq_compute (all / day / night) on
hand-made predictions; semantic label folders give the evaluator's mIoU."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.evaluation import pq_compute
from PIL import Image

from conftest import REPO
from hapnet_d2.data.datasets.register_panoptic import register_rgbt_panoptic_split
from hapnet_d2.data.datasets.register_mfnet import load_mfnet_split
from hapnet_d2.data.panoptic_format import read_panoptic_png, segments_info_of, write_panoptic_png
from hapnet_d2.data.synth import SynthSpec, ensure_synth_dataset
from hapnet_d2.data.synth.panoptic import ensure_synth_panoptic

TINY = SynthSpec(seed=11, num_train=0, num_val=0, num_test=4)
NAME = "test_evaluate_predictions_pan"


def _tool():
    spec = importlib.util.spec_from_file_location("evaluate_predictions", os.path.join(REPO, "tools", "evaluate_predictions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder, name, ids, category_of):
    write_panoptic_png(os.path.join(folder, name), ids)
    return {"file_name": name, "segments_info": segments_info_of(ids, category_of)}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Ground truth with a crowd segment and void pixels; predictions with a missed segment, a
    false positive and void pixels."""
    tmp = tmp_path_factory.mktemp("evalpred")
    root = str(tmp / "synth_rgbt")
    ensure_synth_dataset(root, TINY)
    ensure_synth_panoptic(root)
    gt_dir, pred_dir = str(tmp / "gt"), str(tmp / "pred")
    shutil.copytree(os.path.join(root, "panoptic"), gt_dir)
    os.makedirs(pred_dir)
    gt = json.loads(open(os.path.join(gt_dir, "panoptic_test.json")).read())
    categories = {}
    pred_anns = []
    for k, ann in enumerate(gt["annotations"]):
        ids = read_panoptic_png(os.path.join(gt_dir, ann["file_name"]))
        cat = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        things = [s for s in ann["segments_info"] if s["category_id"] in (2, 3, 4, 8)]
        pred = ids.copy()
        if k == 0 and things:  # prediction misses a thing (its pixels predicted void)
            pred[pred == things[0]["id"]] = 0
        if k == 1:  # a false-positive car on the background
            pred[2:12, 2:12] = 2999
            cat[2999] = 2
        if k == 2:  # void pixels in the ground truth
            ids[:, :10] = 0
            ann.update(_write(gt_dir, ann["file_name"], ids, lambda i: cat[i]))
        if k == 3 and things:  # a crowd region in the ground truth
            for s in ann["segments_info"]:
                if s["id"] == things[-1]["id"]:
                    s["iscrowd"] = 1
        pred_anns.append(dict(image_id=ann["image_id"], **_write(pred_dir, ann["file_name"], pred, lambda i: cat[i])))
        categories.update(cat)
    with open(os.path.join(gt_dir, "panoptic_test.json"), "w") as f:
        json.dump(gt, f)
    pred_json = str(tmp / "pred.json")
    with open(pred_json, "w") as f:
        json.dump({"annotations": pred_anns, "categories": gt["categories"]}, f)
    register_rgbt_panoptic_split(
        NAME, lambda: load_mfnet_split(root, "test"), panoptic_json=os.path.join(gt_dir, "panoptic_test.json"),
        panoptic_root=gt_dir, categories=gt["categories"], has_day_night=True,
    )
    yield tmp, gt, pred_anns, gt_dir, pred_dir, pred_json
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _reference(tmp, gt, pred_anns, gt_dir, pred_dir, condition):
    keep = {im["id"] for im in gt["images"] if condition is None or im["condition"] == condition}
    gt_sub = dict(gt, images=[i for i in gt["images"] if i["id"] in keep],
                  annotations=[a for a in gt["annotations"] if a["image_id"] in keep])
    (tmp / "ref_gt.json").write_text(json.dumps(gt_sub))
    (tmp / "ref_pred.json").write_text(json.dumps({"annotations": [a for a in pred_anns if a["image_id"] in keep]}))
    return pq_compute(str(tmp / "ref_gt.json"), str(tmp / "ref_pred.json"), gt_dir, pred_dir)


def test_pq_equals_panopticapi_by_subset(case, capsys):
    tmp, gt, pred_anns, gt_dir, pred_dir, pred_json = case
    out = tmp / "report"
    assert _tool().main(["--dataset-name", NAME, "--predictions", pred_json, "--output", str(out)]) == 0
    assert "| Subset | PQ |" in capsys.readouterr().out
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    for key, condition in (("panoptic_seg", None), ("panoptic_seg_day", "day"), ("panoptic_seg_night", "night")):
        ref = _reference(tmp, gt, pred_anns, gt_dir, pred_dir, condition)
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for m in ("pq", "sq", "rq"):
                assert metrics[key][m.upper() + suffix] == pytest.approx(100 * ref[group][m], abs=1e-6), (key, group, m)
    assert metrics["panoptic_seg"]["PQ"] < 100.0  # the edits cost something
    # a class absent from both ground truth and prediction (color_cone, id 8) is left out of the
    # averages, as in pq_compute (compared above), and its own PQ is undefined, not 0
    used = {s["category_id"] for ann in gt["annotations"] + pred_anns for s in ann["segments_info"]}
    assert 8 not in used and all(c in used for c in (1, 2, 3, 4))
    assert metrics["panoptic_seg"]["PQ-color_cone"] is None  # NaN is written as null in results.json


def test_semantic_label_folder(case, tmp_path):
    tmp, *_ = case
    dicts = DatasetCatalog.get(NAME)
    preds = tmp_path / "labels"
    preds.mkdir()
    for d in dicts:  # the ground truth itself, with one image's classes shifted
        label = np.array(Image.open(d["sem_seg_file_name"]))
        if d is dicts[0]:
            label = np.where(label == 0, 4, label).astype(np.uint8)
        Image.fromarray(label).save(preds / f"{d['image_id']}.png")
    assert _tool().main(["--dataset-name", NAME, "--predictions", str(preds), "--output", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "results.json").read_text())["metrics"]
    assert metrics["sem_seg"]["mIoU"] < 100.0
    other = [d for d in dicts if d["condition"] != dicts[0]["condition"]]
    assert other and metrics[f"sem_seg_{other[0]['condition']}"]["mIoU"] == pytest.approx(100.0)


def test_missing_prediction_is_one_line(case, tmp_path):
    tmp, *_ = case
    empty = tmp_path / "labels"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        _tool().main(["--dataset-name", NAME, "--predictions", str(empty)])
    assert "file does not exist" in str(e.value) and str(empty) in str(e.value)
