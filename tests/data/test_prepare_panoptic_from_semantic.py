"""Semantic -> COCO panoptic conversion on a hand-made label map, loaded back through registration."""
import json
import os
import subprocess
import sys

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from conftest import REPO
from data.rgbt_dataset_writers import write_mfnet
from hapnet_d2.data.datasets import load_mfnet_split
from hapnet_d2.data.datasets.register_panoptic import register_converted_panoptic
from hapnet_d2.data.panoptic_format import read_panoptic_png
from hapnet_d2.data.panoptic_from_semantic import panoptic_ids_from_semantic

CAR, PERSON, CURVE = 1, 2, 4


def _label():
    """8x10: background 0, two separate cars, a 2-pixel person (below min area 3), a curve
    strip in two pieces, ignore pixels."""
    label = np.zeros((8, 10), np.uint8)
    label[1:3, 1:4] = CAR  # car 1 (6 px)
    label[5:7, 6:9] = CAR  # car 2 (6 px), not touching car 1
    label[0, 8:10] = PERSON  # 2 px
    label[7, 0:3] = CURVE
    label[4, 9] = CURVE  # a second piece of curve: still one stuff segment
    label[4, 0] = 255
    return label


def test_components_by_hand():
    label = _label()
    ids = panoptic_ids_from_semantic(label, {CAR, PERSON}, min_area=3)
    car1, car2 = ids[1, 1], ids[5, 6]
    assert {car1, car2} == {2001, 2002}
    assert (ids[label == CAR] >= 2001).all() and set(np.unique(ids[label == CAR])) == {2001, 2002}
    assert (ids[1:3, 1:4] == car1).all() and (ids[5:7, 6:9] == car2).all()
    assert (ids[label == PERSON] == 0).all()  # below min area: void
    assert (ids[label == CURVE] == 5000).all()  # stuff: one segment however many pieces
    assert (ids[label == 0] == 1000).all() and ids[4, 0] == 0  # ignore -> void
    # 8-connectivity: diagonal neighbours are one instance
    diag = np.zeros((3, 3), np.uint8)
    diag[0, 0] = diag[1, 1] = CAR
    assert len(np.unique(panoptic_ids_from_semantic(diag, {CAR}, 1))) == 2  # background + one car


def test_converter_writes_what_registration_and_panopticapi_read(tmp_path):
    root = tmp_path / "MFNet"
    write_mfnet(str(root), names=("00001D", "00002N"), split="test")
    label = np.zeros((6, 8), np.uint8)  # the images' size
    label[0:2, 0:3] = CAR
    label[3:5, 5:8] = CAR  # a second car, not touching the first
    label[5, 0:4] = CURVE
    Image.fromarray(label).save(root / "labels" / "00001D.png")
    proc = subprocess.run(
        [sys.executable, "datasets/prepare_panoptic_from_semantic.py", "--format", "mfnet", "--root", str(root),
         "--split", "test", "--min-area", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((root / "panoptic" / "panoptic_test.json").read_text())
    # color_cone is a thing, as in the synthetic panoptic data
    assert [c["name"] for c in data["categories"] if c["isthing"]] == ["car", "person", "bike", "color_cone"]
    assert [im["condition"] for im in data["images"]] == ["day", "night"]

    register_converted_panoptic("test_conv_mfnet_rgbt", str(root), ["test", "val"], load_mfnet_split, True)
    name = "test_conv_mfnet_rgbt_panoptic_test"
    try:
        assert "test_conv_mfnet_rgbt_panoptic_val" not in DatasetCatalog.list()  # not converted
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "rgbt_panoptic" and meta.thing_dataset_id_to_contiguous_id == {2: 1, 3: 2, 4: 3, 8: 7}
        first = dicts[0]
        ids = read_panoptic_png(first["pan_seg_file_name"])
        label = np.array(Image.open(first["sem_seg_file_name"]))
        cars = [s for s in first["segments_info"] if s["category_id"] == CAR]
        assert len(cars) == 2 and all(s["isthing"] for s in cars)
        for seg in first["segments_info"]:
            assert (label[ids == seg["id"]] == seg["category_id"]).all()
            assert seg["area"] == int((ids == seg["id"]).sum())
        # panopticapi scores the ground truth against itself as perfect
        from panopticapi.evaluation import pq_compute

        pred = tmp_path / "pred.json"
        pred.write_text(json.dumps({"annotations": data["annotations"]}))
        result = pq_compute(str(root / "panoptic" / "panoptic_test.json"), str(pred),
                            str(root / "panoptic"), str(root / "panoptic"))
        assert abs(result["All"]["pq"] - 1.0) < 1e-9
    finally:
        for n in [n for n in DatasetCatalog.list() if n.startswith("test_conv_")]:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_converter_rejects_unknown_thing_class(tmp_path):
    proc = subprocess.run(
        [sys.executable, "datasets/prepare_panoptic_from_semantic.py", "--format", "mfnet", "--root", str(tmp_path),
         "--thing-classes", "truck"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "truck" in proc.stderr and "Traceback" not in proc.stderr
