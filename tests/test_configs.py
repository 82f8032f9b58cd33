"""The YAML configs: they load, the dataset configs hold DESIGN.md's recipe, and each ablation
config changes exactly its paper row's keys."""
import glob
import math
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import REPO, load_cfg

ALL_CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
)
REFERENCE = "configs/mfnet/hapnet_beitv2_b.yaml"
ABLATIONS = "configs/mfnet/ablations"


def flatten(node, prefix=""):
    """``{"MODEL.HAPNET.USE_CCG": False, ...}`` from a CfgNode (lists and tuples as tuples)."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return flat


def cfg_diff(path, base_path):
    """The keys whose values in ``path`` differ from ``base_path``: ``{key: value in path}``."""
    cfg, base = flatten(load_cfg(path)), flatten(load_cfg(base_path))
    assert cfg.keys() == base.keys()
    return {k: v for k, v in cfg.items() if v != base[k]}


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_every_config_loads(path):
    cfg = load_cfg(path)
    assert cfg.MODEL.META_ARCHITECTURE == "HAPNet"
    crop_h, crop_w = cfg.INPUT.CROP.SIZE
    assert crop_h == crop_w, "crops must be square (fixed relative-position window)"


def test_the_configs_of_this_task_are_found():
    for path in [
        "configs/pst900/Base-PST900.yaml", "configs/pst900/hapnet_beitv2_b.yaml",
        "configs/kp/Base-KP.yaml", "configs/kp/hapnet_beitv2_b.yaml",
        "configs/nyuv2/Base-NYUv2.yaml", "configs/nyuv2/hapnet_beitv2_b.yaml",
        f"{ABLATIONS}/default.yaml", f"{ABLATIONS}/table9_dinov2_b14.yaml",
    ]:
        assert path in ALL_CONFIGS


# The authors' configs, with the paper's lr 2e-4 and layer decay 0.9 where the two disagree (MFNet
# lr and decay, PST900 lr, NYU decay): (train split size, batch, lr, layer decay, crop, base scale
# (H, W), slide stride, train / test datasets, classes, gradient clipping, val split)
RECIPES = {
    "mfnet": (784, 7, 2e-4, 0.9, 480, (480, 640), 320, "mfnet_rgbt_train", "mfnet_rgbt_test", 9, True,
              "mfnet_rgbt_val"),
    "pst900": (597, 3, 2e-4, 0.9, 704, (704, 1280), 640, "pst900_rgbt_train", "pst900_rgbt_test", 5, True, None),
    "kp": (499, 5, 2e-4, 0.9, 512, (512, 640), 320, "kp_rgbt_train", "kp_rgbt_test", 19, False, "kp_rgbt_val"),
    "nyuv2": (795, 6, 2e-4, 0.9, 480, (480, 640), 320, "nyuv2_rgbhha_train", "nyuv2_rgbhha_test", 40, True,
              None),
}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_dataset_reference_config_follows_design(dataset):
    num_train, batch, lr, decay, crop, base, stride, train, test, classes, clip, val = RECIPES[dataset]
    cfg = load_cfg(f"configs/{dataset}/hapnet_beitv2_b.yaml")
    assert cfg.SOLVER.IMS_PER_BATCH == batch
    assert cfg.SOLVER.BASE_LR == pytest.approx(lr)
    assert cfg.SOLVER.LAYER_DECAY_RATE == pytest.approx(decay)
    assert cfg.SOLVER.MAX_ITER == math.ceil(200 * num_train / batch)  # 200 epochs
    assert tuple(cfg.INPUT.CROP.SIZE) == (crop, crop) == tuple(cfg.TEST.SLIDE_CROP)
    assert tuple(cfg.INPUT.BASE_SIZE) == base
    assert tuple(cfg.TEST.SLIDE_STRIDE) == (stride, stride)
    assert cfg.TEST.MODE == "slide"
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == ((train,), (test,))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    for name in (train, test):  # registered (lazily) with that many classes
        assert name in DatasetCatalog.list()
        assert len(MetadataCatalog.get(name).stuff_classes) == classes
    # the common recipe of Base-HAPNet.yaml (s.3)
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WARMUP_ITERS) == ("ADAMW", 0.05, 1500)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 5.0 and cfg.MODEL.HAPNET.AUX_HEAD.ENABLED
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED == clip
    # model selection: best on val where there is a val split, else the final model
    if val is None:
        assert cfg.TEST.MODEL_SELECTION == "last" and cfg.DATASETS.VAL == ()
    else:
        assert cfg.TEST.MODEL_SELECTION == "val" and cfg.DATASETS.VAL == (val,)
        assert val in DatasetCatalog.list()
    assert cfg.OUTPUT_DIR == f"output/{dataset}/hapnet_beitv2_b"


def test_dataset_configs_differ_only_in_the_dataset_recipe():
    recipe_keys = {
        "DATASETS.TRAIN", "DATASETS.TEST", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "INPUT.BASE_SIZE",
        "INPUT.CROP.SIZE", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.LAYER_DECAY_RATE",
        "SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD", "TEST.SLIDE_CROP", "TEST.SLIDE_STRIDE",
        "TEST.EVAL_PERIOD", "OUTPUT_DIR", "DATASETS.VAL", "TEST.MODEL_SELECTION", "SOLVER.CLIP_GRADIENTS.ENABLED",
    }
    for dataset in ("pst900", "kp", "nyuv2"):
        assert set(cfg_diff(f"configs/{dataset}/hapnet_beitv2_b.yaml", REFERENCE)) <= recipe_keys


NO_AUX = {"MODEL.HAPNET.AUX_HEAD.ENABLED": False}  # paper Sect. 4.3: ablations without the aux task
H = "MODEL.HAPNET."
# file -> the keys of its paper row
ABLATION_ROWS = {
    "default": {},
    **{f"table5_strategy_{s.lower()}": {H + "INPUT_STRATEGY": s} for s in "ABCEFGHI"},
    "table6_resnet101_shared": {H + "CSPD_NAME": "resnet101"},
    "table6_swin_s_shared": {H + "CSPD_NAME": "swin_small_patch4_window7_224"},
    "table6_convnext_s_separate": {H + "CSPD_SHARED_WEIGHTS": False},
    "table7_sum": {H + "USE_GLCA": False, H + "USE_CCG": False},
    "table7_glca_only": {H + "USE_CCG": False},
    "table7_ccg_only": {H + "USE_GLCA": False},
    "table9_deit_b16": {H + "VFM_NAME": "deit_base_patch16_224", H + "VFM_LAYER_SCALE_INIT": 0.0},
    "table9_augreg_b16": {H + "VFM_NAME": "vit_base_patch16_224", H + "VFM_LAYER_SCALE_INIT": 0.0},
    "table9_beit_b16": {H + "VFM_NAME": "beit_base_patch16_224"},
    "table9_dinov2_b14": {H + "VFM_NAME": "vit_base_patch14_dinov2"},
}

PAPER_MIOU = {
    "default": 60.9,
    **dict(zip([f"table5_strategy_{s}" for s in "abcefghi"], [58.9, 55.3, 54.2, 53.9, 56.7, 58.1, 55.1, 51.5])),
    "table6_resnet101_shared": 36.8, "table6_swin_s_shared": 58.2, "table6_convnext_s_separate": 61.2,
    "table7_sum": 57.9, "table7_glca_only": 59.1, "table7_ccg_only": 58.0,
    "table9_deit_b16": 59.4, "table9_augreg_b16": 59.3, "table9_beit_b16": 59.7, "table9_dinov2_b14": 60.3,
}


@pytest.mark.parametrize("name", sorted(ABLATION_ROWS))
def test_ablation_changes_only_its_row(name):
    path = f"{ABLATIONS}/{name}.yaml"
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    assert "_BASE_: ../hapnet_beitv2_b.yaml" in text
    header = text.split("_BASE_")[0]
    assert f"{PAPER_MIOU[name]} mIoU" in header  # the header quotes the paper's number
    expected = {**ABLATION_ROWS[name], **NO_AUX, "OUTPUT_DIR": f"output/mfnet/ablations/{name}"}
    assert cfg_diff(path, REFERENCE) == expected


def test_every_table_5_6_7_9_file_is_checked():
    files = {os.path.splitext(os.path.basename(p))[0] for p in ALL_CONFIGS if p.startswith(ABLATIONS)}
    ours = {f for f in files if f == "default" or f.split("_")[0] in ("table5", "table6", "table7", "table9")}
    assert ours == set(ABLATION_ROWS)


def test_panoptic_ablation_trains_the_quickstart_model_longer():
    """`make synth-ablation-panoptic`'s config (tests/tools/test_quickstart.py checks the tool uses
    it) is the quick start's panoptic model with only the schedule changed."""
    path = "configs/synth/hapnet_tiny_panoptic_ablation.yaml"
    assert cfg_diff(path, "configs/synth/hapnet_tiny_panoptic.yaml") == {
        "SOLVER.MAX_ITER": 3000,
        "OUTPUT_DIR": "output/synth/hapnet_tiny_panoptic_ablation",
    }
