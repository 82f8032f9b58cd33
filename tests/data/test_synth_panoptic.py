"""Panoptic ground truth of the synthetic dataset, its registration and the panoptic mapper."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from conftest import load_cfg
from hapnet_d2.data.dataset_mappers import RGBTPanopticDatasetMapper
from hapnet_d2.data.datasets.register_synth import register_synth_panoptic_dataset
from hapnet_d2.data.panoptic_format import rgb2id
from hapnet_d2.data.synth import SynthSpec, ensure_synth_dataset
from hapnet_d2.data.synth.objects import THING_CLASSES
from hapnet_d2.data.synth.panoptic import ensure_synth_panoptic

TINY = SynthSpec(seed=5, num_train=4, num_val=2, num_test=4)


def _hash_tree(root, sub):
    digest = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(root, sub))):
        with open(os.path.join(root, sub, name), "rb") as f:
            digest.update(name.encode() + f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets") / "synth_rgbt")
    ensure_synth_dataset(root, TINY)
    semantic = (_hash_tree(root, "images"), _hash_tree(root, "labels"))
    ensure_synth_panoptic(root)
    assert (_hash_tree(root, "images"), _hash_tree(root, "labels")) == semantic  # untouched
    return root


def test_panoptic_png_matches_the_label_map(synth_root):
    with open(os.path.join(synth_root, "panoptic", "panoptic_train.json")) as f:
        data = json.load(f)
    cats = {c["id"]: c for c in data["categories"]}
    assert {c["name"] for c in cats.values() if c["isthing"]} == {"car", "person", "bike", "color_cone"}
    seen_things = 0
    for ann in data["annotations"]:
        ids = rgb2id(np.array(Image.open(os.path.join(synth_root, "panoptic", ann["file_name"])).convert("RGB")))
        label = np.array(Image.open(os.path.join(synth_root, "labels", ann["file_name"])))
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) == set(segments)  # no void, every segment present
        stuff_classes = []
        for seg_id, seg in segments.items():
            mask = ids == seg_id
            cls = seg["category_id"] - 1
            assert (label[mask] == cls).all()  # a segment lies on its class
            assert seg["area"] == int(mask.sum())
            x, y, w, h = seg["bbox"]
            rows, cols = np.nonzero(mask)
            assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())
            if cats[seg["category_id"]]["isthing"]:
                seen_things += 1
            else:
                stuff_classes.append(cls)
        assert len(stuff_classes) == len(set(stuff_classes))  # one segment per stuff class
        for cls in np.unique(label):  # every pixel of a class is covered by that class's segments
            covered = np.isin(ids, [i for i, s in segments.items() if s["category_id"] - 1 == cls])
            assert (covered == (label == cls)).all()
    assert seen_things > 0


def test_panoptic_ground_truth_is_deterministic(synth_root, tmp_path):
    other = str(tmp_path / "synth_rgbt")
    ensure_synth_dataset(other, TINY)
    ensure_synth_panoptic(other)
    assert _hash_tree(other, "panoptic") == _hash_tree(synth_root, "panoptic")


def test_registered_panoptic_split_has_detectron2_metadata(synth_root):
    name = "test_synth_panoptic_val_tmp"
    register_synth_panoptic_dataset(name, synth_root, "val", TINY)
    try:
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert len(dicts) == 2 and {d["condition"] for d in dicts} == {"day", "night"}
        assert meta.evaluator_type == "rgbt_panoptic" and meta.label_divisor == 1000
        assert meta.panoptic_json.endswith("panoptic_val.json") and os.path.isdir(meta.panoptic_root)
        assert sorted(meta.thing_dataset_id_to_contiguous_id.values()) == sorted(THING_CLASSES)
        assert len(meta.stuff_dataset_id_to_contiguous_id) == len(meta.stuff_classes) == 9
        with open(meta.panoptic_json) as f:
            assert [a["image_id"] for a in json.load(f)["annotations"]] == [d["image_id"] for d in dicts]
        for d in dicts:
            assert os.path.isfile(d["pan_seg_file_name"])
            for seg in d["segments_info"]:
                assert seg["isthing"] == (seg["category_id"] in THING_CLASSES)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_panoptic_mapper_keeps_instances_aligned_with_the_labels(synth_root):
    name = "test_synth_panoptic_train_tmp"
    register_synth_panoptic_dataset(name, synth_root, "train", TINY)
    try:
        cfg = load_cfg("configs/synth/hapnet_tiny_panoptic.yaml", ["INPUT.CROP.SIZE", (96, 96)])
        mapper = RGBTPanopticDatasetMapper(cfg, is_train=True)
        np.random.seed(0)
        for d in DatasetCatalog.get(name):
            out = mapper(d)
            inst, sem = out["instances"], out["sem_seg"]
            masks = inst.gt_masks.tensor
            assert masks.shape[1:] == sem.shape == out["image"].shape[1:] == (96, 96)
            assert not (masks.sum(0) > 1).any()  # segments do not overlap
            for cls, mask in zip(inst.gt_classes.tolist(), masks):
                assert mask.any() and (sem[mask] == cls).all()
            covered = masks.any(0)
            assert (sem[~covered] == 255).all() and (sem[covered] != 255).all()
            # one mask per stuff class present, thing masks for every thing pixel
            for cls in torch.unique(sem[covered]).tolist():
                n = int((inst.gt_classes == cls).sum())
                assert n >= 1 if cls in THING_CLASSES else n == 1
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_dataset_without_panoptic_labels_gains_identical_ones(synth_root, tmp_path):
    """A synthetic dataset generated before panoptic labels existed: its scenes are re-drawn
    from their seeds, giving the very files that generation writes."""
    import shutil

    old = str(tmp_path / "synth_rgbt")
    ensure_synth_dataset(old, TINY)
    shutil.rmtree(os.path.join(old, "panoptic"))
    ensure_synth_panoptic(old)
    assert _hash_tree(old, "panoptic") == _hash_tree(synth_root, "panoptic")
    assert [n for n in os.listdir(old) if n.startswith(".")] == []  # no temporary folder left
