"""demo/: the command line end to end (subprocesses, tiny config, random weights), the
predictor, the paired video reader and the panel drawing of hapnet_d2.utils.visualizer."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MFNET_SAMPLE, requires_mfnet_sample
from hapnet_d2.checkpoint import UnsafeCheckpointError
from hapnet_d2.data import RGBTDataError, read_rgbt
from hapnet_d2.data.datasets import MFNET_COLORS
from hapnet_d2.utils.visualizer import (
    colorize_label,
    draw_legend,
    draw_panel,
    overlay_label,
    thermal_to_rgb,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "demo"
TINY_CONFIG = REPO / "configs" / "synth" / "hapnet_tiny.yaml"
MFNET_SAMPLE = Path(MFNET_SAMPLE)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predictor = _load("predictor", DEMO_DIR / "predictor.py")
sys.modules.setdefault("predictor", predictor)  # demo.py imports its sibling predictor.py
demo_cli = _load("demo_cli", DEMO_DIR / "demo.py")
writers = _load("rgbt_writers_for_demo", REPO / "tests" / "data" / "rgbt_dataset_writers.py")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, here and in the demo subprocesses (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_demo(output, *inputs):
    """Run demo/demo.py in a subprocess (one torch thread) on the tiny config."""
    command = [sys.executable, str(DEMO_DIR / "demo.py"), "--config-file", str(TINY_CONFIG)]
    command += ["--output", str(output), "--random-weights", *map(str, inputs), "--opts", "MODEL.DEVICE", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def find_tile(panel, image, column):
    """Row offset at which ``image`` appears unchanged in ``panel`` at ``column`` (else None)."""
    height, width = image.shape[:2]
    for top in range(panel.shape[0] - height + 1):
        if np.array_equal(panel[top : top + height, column : column + width], image):
            return top
    return None


def save_png(path, array):
    Image.fromarray(array).save(path)
    return path


def write_video(path, frames):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def assert_one_line_error(returncode, stderr, path, reason):
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last and reason in last, last


# ----------------------------------------------------------------------------- command line


@requires_mfnet_sample
def test_rgbt_sample_writes_panel_and_full_size_label(tmp_path):
    result = run_demo(tmp_path, "--rgbt", MFNET_SAMPLE)
    assert result.returncode == 0, result.stderr
    label_image = Image.open(tmp_path / "01477D_label.png")
    assert label_image.mode == "L" and label_image.size == (640, 480)
    label = np.asarray(label_image)
    assert label.max() < 9

    rgb, thermal = read_rgbt(
        {"file_name": str(MFNET_SAMPLE), "thermal_file_name": "", "rgbt_layout": "mfnet4"}
    )
    panel = np.asarray(Image.open(tmp_path / "01477D_panel.png").convert("RGB"))
    assert panel.shape[1] == 3 * 640
    top = find_tile(panel, rgb, 0)
    assert top is not None, "the RGB tile is not the input image"
    assert np.array_equal(panel[top : top + 480, 640:1280], thermal_to_rgb(thermal))
    overlay = overlay_label(rgb, label, MFNET_COLORS)
    assert np.array_equal(panel[top : top + 480, 1280:], overlay), "prediction tile != label"


def test_rgb_thermal_pairs_stop_at_a_mismatched_pair(tmp_path):
    rng = np.random.default_rng(0)
    rgb = save_png(tmp_path / "street.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    thermal = rng.integers(0, 256, (48, 80), dtype=np.uint8)
    thermal_path = save_png(tmp_path / "street_ir.png", thermal)
    bad_rgb = save_png(tmp_path / "bad.png", np.zeros((48, 64, 3), np.uint8))
    bad_thermal = save_png(tmp_path / "bad_ir.png", np.zeros((40, 64), np.uint8))
    inputs = ["--rgb", rgb, bad_rgb, "--thermal", thermal_path, bad_thermal]
    result = run_demo(tmp_path / "out", *inputs)
    assert_one_line_error(result.returncode, result.stderr, bad_thermal, "differs from the RGB")
    assert not (tmp_path / "out" / "bad_panel.png").exists()

    label = Image.open(tmp_path / "out" / "street_label.png")  # the pair before the bad one
    assert label.size == (80, 48) and np.asarray(label).max() < 9
    panel = np.asarray(Image.open(tmp_path / "out" / "street_panel.png").convert("RGB"))
    top = find_tile(panel, thermal_to_rgb(thermal), 80)
    assert top is not None, "the thermal tile is not the thermal input"


def test_corrupt_file_is_a_one_line_error(tmp_path, capsys):
    good = save_png(tmp_path / "good.png", np.zeros((48, 64, 4), np.uint8))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    argv = ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "out"), "--random-weights"]
    code = demo_cli.main(argv + ["--rgbt", str(corrupt), "--opts", "MODEL.DEVICE", "cpu"])
    assert_one_line_error(code, capsys.readouterr().err, corrupt, "unreadable or truncated")


def test_paired_videos_give_a_panel_video(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    rgb = write_video(tmp_path / "drive.mp4", frames)
    thermal = write_video(tmp_path / "drive_ir.mp4", frames[::-1])
    result = run_demo(tmp_path / "out", "--video-rgb", rgb, "--video-thermal", thermal)
    assert result.returncode == 0, result.stderr
    video = cv2.VideoCapture(str(tmp_path / "out" / "drive_panel.mp4"))
    assert video.isOpened()
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 3 * 64
    assert int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)) > 48  # titles and legend
    video.release()


# ----------------------------------------------------------------------------- arguments


def test_rgb_and_thermal_counts_must_match(tmp_path, capsys):
    parser = demo_cli.get_parser()
    args = parser.parse_args(
        ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path)]
        + ["--rgb", "a.png", "b.png", "--thermal", "a_ir.png"]
    )
    with pytest.raises(SystemExit) as exit_info:
        demo_cli.check_args(parser, args)
    assert exit_info.value.code == 2
    assert "2 --rgb images but 1 --thermal images" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["mfnet", "kp"])
def test_input_dir_enumerates_the_layout_pairs(tmp_path, layout):
    written = getattr(writers, f"write_{layout}")(str(tmp_path), split="test")
    parser = demo_cli.get_parser()
    args = parser.parse_args(
        ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "out")]
        + ["--input-dir", str(tmp_path), "--layout", layout]
    )
    samples = demo_cli.collect_samples(parser, args)
    assert [name for name, _ in samples] == list(written)
    for name, dataset_dict in samples:
        rgb, thermal = read_rgbt(dataset_dict)
        np.testing.assert_array_equal(rgb, written[name][0])
        stored = np.float32(written[name][1])
        expected = stored.mean(axis=2) if stored.ndim == 3 else stored  # KP lwir is averaged
        np.testing.assert_allclose(thermal, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- predictor


def test_predictor_channel_order_and_checkpoints(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    thermal = rng.random((40, 56), dtype=np.float32) * 255
    reference = predictor.RGBTPredictor(tiny_cfg)
    scores = reference(rgb, thermal)
    assert scores.shape == (9, 40, 56)

    checkpoint = tmp_path / "model.pth"
    torch.save({"model": reference.model.state_dict()}, checkpoint)
    bgr_cfg = tiny_cfg.clone()
    bgr_cfg.INPUT.FORMAT = "BGR"
    bgr_cfg.MODEL.WEIGHTS = str(checkpoint)
    loaded = predictor.RGBTPredictor(bgr_cfg)  # same weights, model fed BGR
    torch.testing.assert_close(loaded(rgb, thermal), scores)

    unsafe = tiny_cfg.clone()
    unsafe.MODEL.WEIGHTS = str(tmp_path / "unsafe.pth")
    state = {"model": reference.model.state_dict(), "args": argparse.Namespace()}
    torch.save(state, unsafe.MODEL.WEIGHTS)  # unpickling Namespace needs code execution
    with pytest.raises(UnsafeCheckpointError, match="--allow-unsafe-checkpoint"):
        predictor.RGBTPredictor(unsafe)
    unsafe.MODEL.ALLOW_UNSAFE_CHECKPOINTS = True
    torch.testing.assert_close(predictor.RGBTPredictor(unsafe)(rgb, thermal), scores)

    missing = tiny_cfg.clone()
    missing.MODEL.WEIGHTS = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        predictor.RGBTPredictor(missing)
    with pytest.raises(ValueError, match="thermal is 56x39"):
        reference(rgb, thermal[:39])


def test_video_reader_rejects_mismatched_pairs(tmp_path):
    frame = np.zeros((48, 64, 3), np.uint8)
    rgb = write_video(tmp_path / "rgb.mp4", [frame] * 3)
    smaller = write_video(tmp_path / "small.mp4", [frame[:32, :48]] * 3)
    shorter = write_video(tmp_path / "short.mp4", [frame] * 2)
    with pytest.raises(RGBTDataError, match="frame size 48x32") as error:
        predictor.PairedVideoReader(str(rgb), str(smaller))
    assert error.value.path == str(smaller)
    with pytest.raises(RGBTDataError, match="2 frames but the RGB video") as error:
        predictor.PairedVideoReader(str(rgb), str(shorter))
    assert error.value.path == str(shorter)
    with predictor.PairedVideoReader(str(rgb), str(rgb)) as video:
        pairs = list(video)
    assert len(pairs) == 3 and pairs[0][0].shape == (48, 64, 3) and pairs[0][1].shape == (48, 64)


# ----------------------------------------------------------------------------- visualizer


COLORS = [[0, 0, 0], [255, 0, 0], [0, 200, 100]]
NAMES = ["background", "car", "person"]


def test_overlay_blends_class_colours_and_keeps_ignored_pixels():
    rgb = np.full((2, 3, 3), 100, np.uint8)
    label = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    overlay = overlay_label(rgb, label, COLORS, alpha=0.25)
    expected = 0.75 * rgb + 0.25 * np.asarray(COLORS, np.float64)[np.minimum(label, 2)]
    expected[1, 0] = rgb[1, 0]
    np.testing.assert_allclose(overlay, expected, atol=1)
    np.testing.assert_array_equal(colorize_label(label, COLORS)[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(colorize_label(label, COLORS)[0, 2], COLORS[2])


def test_legend_shows_every_class_colour():
    legend = draw_legend(300, NAMES, COLORS)
    pixels = {tuple(p) for p in legend.reshape(-1, 3)}
    assert all(tuple(c) in pixels for c in COLORS)
    assert legend.shape[1] == 300
    with pytest.raises(ValueError, match="3 class names but 2 colours"):
        draw_legend(300, NAMES, COLORS[:2])


def test_panel_layout():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    thermal = rng.random((30, 40)) * 255
    prediction = rng.integers(0, 3, (30, 40))
    panel = draw_panel(rgb, thermal, prediction, NAMES, COLORS)
    assert panel.dtype == np.uint8 and panel.shape[1] == 3 * 40
    top = find_tile(panel, rgb, 0)
    assert top is not None
    np.testing.assert_array_equal(
        panel[top : top + 30, 80:], overlay_label(rgb, prediction, COLORS)
    )
    with_truth = draw_panel(rgb, thermal, prediction, NAMES, COLORS, ground_truth=prediction)
    assert with_truth.shape[1] == 4 * 40
    with pytest.raises(ValueError, match="prediction is 40x29"):
        draw_panel(rgb, thermal, prediction[:29], NAMES, COLORS)


def test_predictor_feeds_the_base_scale_and_returns_input_size(tiny_cfg):
    """As the test mapper: a 56x40 pair with base scale 112x80 reaches the model at 112x80;
    the scores come back at 56x40."""
    cfg = tiny_cfg.clone()
    cfg.INPUT.BASE_SIZE = (80, 112)
    demo_predictor = predictor.RGBTPredictor(cfg)
    seen = []
    demo_predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]))
    rng = np.random.default_rng(3)
    scores = demo_predictor(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.random((40, 56), dtype=np.float32))
    assert scores.shape == (9, 40, 56)
    assert tuple(seen[0]["image"].shape) == (3, 80, 112) and tuple(seen[0]["thermal"].shape) == (1, 80, 112)
    assert (seen[0]["height"], seen[0]["width"]) == (40, 56)
