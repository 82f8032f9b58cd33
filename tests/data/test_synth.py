"""Tests of the synthetic RGB-T dataset generator and its registration."""

import filecmp
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from hapnet_d2.data.datasets.register_synth import register_all_synth
from hapnet_d2.data.io import read_sample
from hapnet_d2.data.synth import (
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    COLOR_CONE,
    CURVE,
    GUARDRAIL,
    PERSON,
    SPLITS,
    SynthSpec,
    ensure_synth_dataset,
    generate_dataset,
    main,
    render_sample,
)

TINY = SynthSpec(seed=3, num_train=4, num_val=2, num_test=4)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "synth_rgbt")
    assert generate_dataset(root, TINY)
    return root


@functools.lru_cache(maxsize=None)
def _rendered(night, count=24, seed=11):
    """``count`` rendered ``(rgbt, label)`` pairs, 160x120 (cached: several tests measure them)."""
    return [
        render_sample(np.random.default_rng([seed, i]), 160, 120, night=night) for i in range(count)
    ]


def _contrast(images, labels, cls):
    """Mean |mean(class pixels) - mean(surrounding background ring)| per image and modality.

    Returns:
        tuple: (RGB contrast averaged over channels, thermal contrast), in grey levels.
    """
    rgb_c, th_c = [], []
    for img, lab in zip(images, labels):
        obj = (lab == cls).astype(np.uint8)
        if obj.sum() < 30:
            continue
        ring = cv2.dilate(obj, np.ones((7, 7), np.uint8)).astype(bool) & (lab == 0)
        if ring.sum() < 30:
            continue
        diff = img[obj.astype(bool)].astype(float).mean(0) - img[ring].astype(float).mean(0)
        rgb_c.append(np.abs(diff[:3]).mean())
        th_c.append(abs(diff[3]))
    assert len(rgb_c) >= 5, f"too few images with class {cls} to measure"
    return float(np.mean(rgb_c)), float(np.mean(th_c))


def test_render_is_deterministic_and_varied():
    a = render_sample(np.random.default_rng([0, 1]), 160, 120)
    b = render_sample(np.random.default_rng([0, 1]), 160, 120)
    c = render_sample(np.random.default_rng([0, 2]), 160, 120)
    assert a[0].shape == (120, 160, 4) and a[0].dtype == np.uint8
    assert a[1].shape == (120, 160) and a[1].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_every_class_appears_at_both_sizes():
    for width, height in ((160, 120), (320, 240)):
        labels = [render_sample(np.random.default_rng([5, i]), width, height)[1] for i in range(12)]
        assert labels[0].shape == (height, width)
        assert set(np.unique(np.stack(labels)).tolist()) == set(range(9))


def test_layout_and_label_range(tiny_dataset):
    for split in SPLITS:
        assert os.path.isfile(os.path.join(tiny_dataset, f"{split}.txt"))
    names = {s: open(os.path.join(tiny_dataset, f"{s}.txt")).read().split() for s in SPLITS}
    assert [len(names[s]) for s in ("train", "val", "test")] == [4, 2, 4]
    assert sorted(names["test_day"] + names["test_night"]) == sorted(names["test"])
    assert all(n.endswith("D") for n in names["test_day"])
    assert all(n.endswith("N") for n in names["test_night"]) and names["test_night"]
    assert {n[-1] for n in names["train"]} == {"D", "N"}
    for name in names["train"] + names["val"] + names["test"]:
        d = {
            "file_name": os.path.join(tiny_dataset, "images", name + ".png"),
            "sem_seg_file_name": os.path.join(tiny_dataset, "labels", name + ".png"),
            "rgbt_layout": "mfnet4",
        }
        rgb, thermal, label = read_sample(d)
        assert rgb.shape == (120, 160, 3) and thermal.shape == (120, 160)
        assert label.max() <= 8
    # the file holds R, G, B, thermal in that order (as PIL and the reader see it)
    rgbt, _ = render_sample(np.random.default_rng([TINY.seed, 1]), 160, 120)
    rgb, thermal, _ = read_sample(
        {"file_name": os.path.join(tiny_dataset, "images", "00001D.png"), "rgbt_layout": "mfnet4"}
    )
    assert np.array_equal(rgb, rgbt[..., :3]) and np.array_equal(thermal, rgbt[..., 3])


def test_same_seed_gives_identical_bytes(tiny_dataset, tmp_path):
    again = str(tmp_path / "again")
    generate_dataset(again, TINY)
    cmp = filecmp.dircmp(tiny_dataset, again)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    for sub in ("images", "labels"):
        files = sorted(os.listdir(os.path.join(again, sub)))
        _, mismatch, errors = filecmp.cmpfiles(
            os.path.join(tiny_dataset, sub), os.path.join(again, sub), files, shallow=False
        )
        assert not mismatch and not errors


def test_night_hides_warm_objects_in_rgb_but_not_in_thermal():
    night_imgs, night_labs = zip(*_rendered(night=True))
    day_imgs, day_labs = zip(*_rendered(night=False))
    for cls in (CAR, PERSON, BIKE):
        rgb_night, thermal_night = _contrast(night_imgs, night_labs, cls)
        rgb_day, _ = _contrast(day_imgs, day_labs, cls)
        # far below the night RGB noise (sigma ~7.6 grey levels) and the thermal contrast
        assert rgb_night < 4.0, (cls, rgb_night)
        assert thermal_night > 15.0 and thermal_night > 8 * rgb_night, (cls, thermal_night)
        assert rgb_day > 15.0, (cls, rgb_day)


def test_painted_classes_have_no_heat_but_are_visible_in_rgb():
    for night in (False, True):
        imgs, labs = zip(*_rendered(night=night))
        for cls in (CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP):
            rgb, thermal = _contrast(imgs, labs, cls)
            # thermal: the road's temperature (noise sigma 3, plus blur from nearby warm objects)
            assert thermal < (2.5 if cls == CURVE else 8.0), (night, cls, thermal)
            assert rgb > (15.0 if night else 30.0), (night, cls, rgb)


def test_ensure_is_safe_under_concurrency(tmp_path):
    root = str(tmp_path / "synth_rgbt")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: ensure_synth_dataset(root, TINY), range(2)))
    assert results == [root, root]
    assert os.listdir(tmp_path) == ["synth_rgbt"]  # no temporary folder left behind
    assert len(os.listdir(os.path.join(root, "images"))) == 10


def test_registered_split_is_generated_on_first_get(tmp_path, monkeypatch):
    names = [n for n in DatasetCatalog.list() if n.startswith("synth_rgbt_")]
    assert set(names) == {f"synth_rgbt_{s}" for s in SPLITS} | {f"synth_rgbt_panoptic_{s}" for s in SPLITS}
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n).as_dict()) for n in names}
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
        register_all_synth(os.environ["DETECTRON2_DATASETS"], TINY)
        assert not os.path.exists(tmp_path / "synth_rgbt")
        dicts = DatasetCatalog.get("synth_rgbt_test_night")
        assert [d["condition"] for d in dicts] == ["night", "night"]
        assert all(os.path.isfile(d["file_name"]) for d in dicts)
        assert os.path.isfile(dicts[0]["sem_seg_file_name"])
        assert len(DatasetCatalog.get("synth_rgbt_train")) == 4  # reuses the generated files
        assert MetadataCatalog.get("synth_rgbt_train").stuff_classes[2] == "person"
    finally:
        for n, (loader, meta) in saved.items():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
            DatasetCatalog.register(n, loader)
            meta.pop("name")
            MetadataCatalog.get(n).set(**meta)


def test_cli_writes_dataset_and_reports_bad_input(tmp_path, capsys):
    out = str(tmp_path / "cli")
    main(
        [
            "--out",
            out,
            "--num-train",
            "2",
            "--num-val",
            "0",
            "--num-test",
            "2",
            "--size",
            "200",
            "150",
            "--seed",
            "1",
        ]
    )
    assert len(os.listdir(os.path.join(out, "images"))) == 4
    rgb, _, _ = read_sample(
        {"file_name": os.path.join(out, "images", "00001D.png"), "rgbt_layout": "mfnet4"}
    )
    assert rgb.shape == (150, 200, 3)
    with pytest.raises(SystemExit):
        main(["--out", out])
    assert f"{out}: a synthetic dataset already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "small"), "--size", "40", "30"])
    assert "size 40x30 (WxH) is too small" in capsys.readouterr().err


def test_refuses_to_write_into_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty but holds no complete synthetic"):
        ensure_synth_dataset(str(tmp_path), TINY)
    assert os.listdir(tmp_path) == ["notes.txt"]
