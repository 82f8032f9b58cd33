"""Mistakes a user types or feeds end in one line, never a traceback: config key typos (closest
valid key), wrong value types, missing config files, a label id outside the classes during
training (naming the label file), a broken image read by a DataLoader worker."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, rgbt_pair
from hapnet_d2.config import ConfigError, closest_key, get_hapnet_cfg

TINY_CONFIG = os.path.join(REPO, "configs", "synth", "hapnet_tiny.yaml")


def _run(args, **env):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _one_line_error(result, code):
    """The last stderr line, after checking the exit code and that no traceback was printed."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    return line


# ----------------------------------------------------------------------------- the config


def test_typo_in_overrides_names_the_closest_key():
    with pytest.raises(ConfigError) as error:
        get_hapnet_cfg(TINY_CONFIG, ["SOLVER.MAX_ITR", "3"])
    assert str(error.value) == "config override: SOLVER.MAX_ITR is not a config key; did you mean SOLVER.MAX_ITER?"


def test_closest_key_for_a_misspelt_section_or_a_bare_name():
    cfg = get_hapnet_cfg(TINY_CONFIG)
    assert closest_key(cfg, "SOLVR.BASE_LR") == "SOLVER.BASE_LR"
    assert closest_key(cfg, "MODEL.HAPNET.USE_GCLA") == "MODEL.HAPNET.USE_GLCA"
    assert closest_key(cfg, "THERMAL_SCALNG") == "INPUT.THERMAL_SCALING"
    assert closest_key(cfg, "QQQQQQ") is None


def test_typo_in_a_yaml_file_names_the_file(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f"_BASE_: {TINY_CONFIG}\nINPUT:\n  THERMAL_SCALNG: fixed\n")
    with pytest.raises(ConfigError) as error:
        get_hapnet_cfg(str(config))
    assert str(error.value) == f"{config}: INPUT.THERMAL_SCALNG is not a config key; did you mean INPUT.THERMAL_SCALING?"


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER expects an int like 2000, got many (str)"),
        (["SOLVER.BASE_LR", "1"], "SOLVER.BASE_LR expects a float like 0.002, got 1 (int); write it with a decimal"),
        (["SOLVER.MAX_ITER"], "config overrides must be KEY VALUE pairs; 'SOLVER.MAX_ITER' has no value"),
    ],
)
def test_bad_override_values(opts, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_hapnet_cfg(TINY_CONFIG, opts)


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file does not exist"):
        get_hapnet_cfg(str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("SOLVER:\n  MAX_ITER: [3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:3: invalid YAML"):
        get_hapnet_cfg(str(broken))
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("_BASE_: missing_base.yaml\n")
    with pytest.raises(ConfigError, match="orphan.yaml: .*missing_base.yaml"):
        get_hapnet_cfg(str(orphan))


# ----------------------------------------------------------------------------- entry points


@pytest.mark.parametrize(
    "command",
    [
        ["train_net.py", "--config-file", TINY_CONFIG, "SOLVER.MAX_ITR", "3"],
        ["demo/demo.py", "--config-file", TINY_CONFIG, "--rgbt", "x.png", "--output", "unused_out",
         "--opts", "SOLVER.MAX_ITR", "3"],
        ["tools/analyze_model.py", "--config-file", TINY_CONFIG, "SOLVER.MAX_ITR", "3"],
        ["tools/benchmark.py", "--config-file", TINY_CONFIG, "SOLVER.MAX_ITR", "3"],
        ["tools/quickstart.py", "SOLVER.MAX_ITR", "3"],
        ["tools/synth_ablation.py", "--opts", "SOLVER.MAX_ITR", "3"],
    ],
    ids=["train_net", "demo", "analyze_model", "benchmark", "quickstart", "synth_ablation"],
)
def test_config_key_typo_is_one_line_everywhere(command, tmp_path):
    line = _one_line_error(_run(command), 2)
    assert line == "error: config override: SOLVER.MAX_ITR is not a config key; did you mean SOLVER.MAX_ITER?"
    assert not os.path.exists(os.path.join(REPO, "unused_out"))


def test_train_net_without_config_file():
    line = _one_line_error(_run(["train_net.py"]), 2)
    assert "--config-file" in line


def test_train_net_bad_value_and_missing_file(tmp_path):
    line = _one_line_error(_run(["train_net.py", "--config-file", TINY_CONFIG, "SOLVER.MAX_ITER", "many"]), 2)
    assert "SOLVER.MAX_ITER expects an int" in line
    missing = str(tmp_path / "absent.yaml")
    line = _one_line_error(_run(["train_net.py", "--config-file", missing]), 2)
    assert line == f"error: {missing}: config file does not exist"


def test_debug_variable_shows_the_traceback():
    result = _run(["train_net.py", "--config-file", TINY_CONFIG, "SOLVER.MAX_ITR", "3"], HAPNET_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


# ----------------------------------------------------------------------------- training data


def test_model_names_the_label_file_of_a_bad_label(tiny_cfg):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg).train()
    good, bad = rgbt_pair(64, 64, seed=0), rgbt_pair(64, 64, seed=1)
    bad["sem_seg"][3, 5] = 20  # 9 classes
    bad["file_name"], bad["sem_seg_file_name"] = "images/00002N.png", "labels/00002N.png"
    with pytest.raises(ValueError, match=r"'labels/00002N.png': label values \[20\]"):
        model([good, bad])
    del bad["sem_seg_file_name"]  # falls back to the image
    with pytest.raises(ValueError, match=r"'images/00002N.png': label values \[20\]"):
        model([good, bad])


def _write_mfnet(root, label_value=None, corrupt=False):
    """Two 48x64 MFNet-layout training pairs under root/MFNet; optionally a label id outside the
    9 classes in the second, or the second image truncated."""
    rng = np.random.default_rng(0)
    folder = root / "MFNet"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for name in ("00001D", "00002N"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)).save(folder / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 9, (48, 64), dtype=np.uint8)).save(folder / "labels" / f"{name}.png")
    if label_value is not None:
        label = np.zeros((48, 64), np.uint8)
        label[10:20, 10:20] = label_value
        Image.fromarray(label).save(folder / "labels" / "00002N.png")
    if corrupt:
        image = folder / "images" / "00002N.png"
        image.write_bytes(image.read_bytes()[:100])
    (folder / "train.txt").write_text("00001D\n00002N\n")
    return folder


def _train(root, *extra):
    return _run(
        ["train_net.py", "--config-file", TINY_CONFIG, "MODEL.DEVICE", "cpu",
         "DATASETS.TRAIN", "('mfnet_rgbt_train',)", "DATASETS.TEST", "()",
         "INPUT.BASE_SIZE", "(48, 64)", "INPUT.RESIZE_RATIO_RANGE", "(1.0, 1.0)", "INPUT.CROP.SIZE", "(64, 64)",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "TEST.AUG.ENABLED", "False",
         "OUTPUT_DIR", str(root / "out"), *extra],
        DETECTRON2_DATASETS=str(root),
    )


@pytest.mark.slow
def test_training_with_a_label_out_of_range_names_the_label_file(tmp_path):
    folder = _write_mfnet(tmp_path, label_value=20)
    line = _one_line_error(_train(tmp_path, "DATALOADER.NUM_WORKERS", "0"), 1)
    assert str(folder / "labels" / "00002N.png") in line and "label values [20]" in line, line
    with open(tmp_path / "out" / "log.txt") as f:
        assert "Traceback" in f.read(), "the log file keeps the traceback"


@pytest.mark.slow
def test_training_with_a_broken_image_in_a_worker_names_the_file(tmp_path):
    folder = _write_mfnet(tmp_path, corrupt=True)
    line = _one_line_error(_train(tmp_path, "DATALOADER.NUM_WORKERS", "1"), 1)
    assert line.startswith(f"error: {folder / 'images' / '00002N.png'}: unreadable or truncated image"), line
    assert "Caught" not in line and "worker" not in line
