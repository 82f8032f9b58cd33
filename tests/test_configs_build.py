"""Every YAML under configs/ builds its model and runs one forward pass on the CPU.

The full-size backbones (BEiTv2-B, ConvNeXt-S, ResNet-101, Swin-S) take too long to build 35 times,
so each config is shrunk through overrides that keep its structure: the VFM keeps its name, its
12 blocks and the config's stage split, with narrower blocks (:data:`VFM_SHRINK`); the CNN
encoders become the smallest member of their family (:data:`SMALL_ENCODER`); heads and decoder
keep their layer counts with narrower widths. The checks are on what the config decides: the
backbone class, the number of classes, the panoptic outputs.
"""
import glob
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from conftest import REPO, load_cfg

CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
)
SIZE = 64  # input and crop size (4x4 ViT tokens)
# metadata standing in for a converted panoptic dataset (which classes are things)
PANOPTIC_METADATA = "test_configs_build_panoptic"
MetadataCatalog.get(PANOPTIC_METADATA).set(thing_dataset_id_to_contiguous_id={1: 1, 2: 2, 3: 3})

# narrower but same depth and layout: 12 VFM blocks of dim 96 (tiny config: 4 of dim 192)
VFM_SHRINK = {"embed_dim": 96, "num_heads": 2}
# the same family and block type, fewer and narrower blocks (build time: 50M parameters -> a few M)
SMALL_ENCODER = {
    "convnext_small": "convnext_atto",
    "resnet101": "resnet26",
    "swin_small_patch4_window7_224": "swin_tiny_patch4_window7_224",
}
HEAD_SHRINK = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DIM_FEEDFORWARD", 64,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", 4,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 32, "MODEL.MASK_FORMER.NHEADS", 4, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
    "MODEL.HAPNET.AUX_HEAD.CHANNELS", 32,
]  # fmt: skip


def shrunk_cfg(path):
    """The config of ``path`` with narrower blocks, a 64x64 crop and no pretrained weights."""
    cfg = load_cfg(path)
    opts = ["INPUT.CROP.SIZE", (SIZE, SIZE), "TEST.MODE", "whole", "TEST.AUG.ENABLED", False, *HEAD_SHRINK]
    if not cfg.MODEL.HAPNET.VFM_KWARGS:  # the tiny configs are small already
        opts += ["MODEL.HAPNET.VFM_KWARGS", VFM_SHRINK, "MODEL.HAPNET.DEFORM_NUM_HEADS", 6]
    encoders = {"MODEL.HAPNET.CSPD_NAME": cfg.MODEL.HAPNET.CSPD_NAME, "MODEL.DUPLEX.ENCODER": cfg.MODEL.DUPLEX.ENCODER}
    for key, name in encoders.items():
        if name in SMALL_ENCODER:
            opts += [key, SMALL_ENCODER[name]]
    if cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON or cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON:
        opts += ["DATASETS.TEST", (PANOPTIC_METADATA,)]  # the real panoptic datasets need their files
    cfg.merge_from_list(opts)
    return cfg


def test_every_config_is_covered():
    assert len(CONFIGS) >= 30
    assert "configs/Base-HAPNet.yaml" in CONFIGS and "configs/synth/hapnet_tiny.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_runs_one_forward(path):
    cfg = shrunk_cfg(path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert type(model.backbone).__name__ == cfg.MODEL.BACKBONE.NAME
    g = torch.Generator().manual_seed(0)
    x = {
        "image": torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8),
        "thermal": torch.rand(1, SIZE, SIZE, generator=g) * 255,
        "height": SIZE, "width": SIZE,
    }  # fmt: skip
    with torch.no_grad():
        (out,) = model([x])
    scores = out["sem_seg"]
    assert scores.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, SIZE, SIZE)
    assert torch.isfinite(scores).all()
    panoptic = cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON
    assert ("panoptic_seg" in out) == panoptic
    if panoptic:
        ids, segments = out["panoptic_seg"]
        assert ids.shape == (SIZE, SIZE)
