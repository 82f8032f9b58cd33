"""demo/demo.py with the tiny panoptic config on the real MFNet frame: panel, panoptic PNG + JSON."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from conftest import MFNET_SAMPLE, REPO, load_cfg, requires_mfnet_sample
from hapnet_d2.data.panoptic_format import rgb2id

CONFIG = "configs/synth/hapnet_tiny_panoptic.yaml"


@requires_mfnet_sample
def test_panoptic_demo_writes_panel_png_and_json(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_cfg(CONFIG))
    weights = tmp_path / "random.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run(
        [sys.executable, "demo/demo.py", "--config-file", CONFIG, "--rgbt", MFNET_SAMPLE, "--output", str(out),
         "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights),
         # random weights are never confident: keep every query so that segments exist
         "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = Image.open(out / "01477D_panoptic.png")
    assert png.size == (640, 480) and png.mode == "RGB"
    ids = rgb2id(np.array(png))
    data = json.loads((out / "01477D_panoptic.json").read_text())
    (ann,) = data["annotations"]
    segments = {s["id"]: s for s in ann["segments_info"]}
    assert segments and set(np.unique(ids)) - {0} == set(segments)
    categories = {c["id"]: c for c in data["categories"]}
    for seg_id, seg in segments.items():
        assert seg["area"] == int((ids == seg_id).sum())
        assert seg["category_id"] in categories and seg["isthing"] == bool(categories[seg["category_id"]]["isthing"])
    label = np.array(Image.open(out / "01477D_label.png"))
    panel = np.array(Image.open(out / "01477D_panel.png"))
    assert label.shape == (480, 640)
    # semantic row (title + 480 + legend) above the panoptic row and the instance row (2 x 480 + titles)
    assert panel.shape[0] > 3 * 480 and panel.shape[1] >= 2 * 640
