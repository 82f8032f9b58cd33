"""The trained tiny model (fixture ``trained_tiny``) exported by the command line and run by
tools/deploy/onnx_infer.py in a process without torch: its label PNGs are the demo's."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import MFNET_SAMPLE, requires_mfnet_sample
from runner_process import loaded_forbidden, run_runner

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tools" / "deploy" / "export_model.py"
DEMO = REPO / "demo" / "demo.py"


def _field(fixture, key):
    return fixture[key] if isinstance(fixture, dict) else getattr(fixture, key)


def _run(command, env):
    result = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@requires_mfnet_sample
def test_onnx_runner_labels_equal_the_demo(trained_tiny, tmp_path):
    config, weights = _field(trained_tiny, "config_file"), _field(trained_tiny, "weights")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETECTRON2_DATASETS": str(_field(trained_tiny, "datasets_root"))}
    # the model at the MFNet frame's own size; the demo resizes to the same base scale
    opts = ["MODEL.WEIGHTS", weights, "TEST.AUG.ENABLED", "False", "TEST.MODE", "whole", "MODEL.DEVICE", "cpu",
            "INPUT.BASE_SIZE", "(480, 640)"]
    exported = _run([EXPORT, "--config-file", config, "--format", "onnx", "--size", 480, 640,
                     "--output", tmp_path / "export", *opts], env)
    assert "verified against PyTorch" in exported.stderr + exported.stdout
    model = tmp_path / "export" / "model_480x640.onnx"
    # inputs: the frame at 480x640 (no resize) and a half-size copy (resized up and back)
    frame = Image.open(MFNET_SAMPLE)
    inputs = [Path(MFNET_SAMPLE), tmp_path / "half.png"]
    frame.resize((320, 240), Image.BILINEAR).save(inputs[1])
    _run([DEMO, "--config-file", config, "--rgbt", *inputs, "--output", tmp_path / "demo", "--opts", *opts], env)
    result = run_runner(["--model", model, "--rgbt", *inputs, "--output", tmp_path / "onnx"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert loaded_forbidden(result) == []
    for path in inputs:
        demo = np.asarray(Image.open(tmp_path / "demo" / f"{path.stem}_label.png"))
        ours = np.asarray(Image.open(tmp_path / "onnx" / f"{path.stem}.png"))
        assert ours.shape == demo.shape == Image.open(path).size[::-1]
        assert len(np.unique(demo)) > 1  # a non-trivial prediction
        assert (ours == demo).mean() >= 0.999, (path.name, (ours == demo).mean())
        assert (tmp_path / "onnx" / f"{path.stem}_overlay.png").is_file()
