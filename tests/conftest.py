"""Shared fixtures: configs of the tiny model and small synthetic RGB-T inputs."""
import os

import pytest
import torch
from hapnet_d2.config import get_hapnet_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# real samples shared by the team (MFNet frame, KP split lists); tests using them skip if absent
SHARED_DATA = os.environ.get("HAPNET_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
MFNET_SAMPLE = os.path.join(SHARED_DATA, "mfnet_samples", "01477D.png")


def load_cfg(path: str, opts=()):
    """A frozen-free config from a repo-relative YAML path plus ``opts`` overrides."""
    cfg = get_hapnet_cfg(os.path.join(REPO, path), opts)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture
def tiny_cfg():
    """The tiny config at 64x64 crops (4x4 ViT tokens), pure-PyTorch-free defaults, without the
    config's test-time augmentation (tests of TTA turn it on)."""
    return load_cfg("configs/synth/hapnet_tiny.yaml", ["INPUT.CROP.SIZE", (64, 64), "TEST.AUG.ENABLED", False])


def rgbt_pair(height: int, width: int, num_classes: int = 9, seed: int = 0):
    """A random RGB-T input dict with a label map, Detectron2 style."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
        "thermal": torch.rand(1, height, width, generator=g) * 255,
        "sem_seg": torch.randint(0, num_classes, (height, width), generator=g),
        "height": height,
        "width": width,
    }
