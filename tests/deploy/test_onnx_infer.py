"""tools/deploy/onnx_infer.py on a hand-made ONNX model (tests/deploy/onnx_toy.py): outputs by
hand, the resize path against PyTorch's interpolation, thermal scaling against hapnet_d2's,
input layouts, one-line errors, and a process that cannot import torch nor Detectron2."""
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hapnet_d2.data.io import ThermalScaling as ProjectThermalScaling
from onnx_toy import CLASS_COLORS, toy_scores, write_toy_model
from runner_process import RUNNER, loaded_forbidden, run_runner

spec = importlib.util.spec_from_file_location("onnx_infer", RUNNER)
onnx_infer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onnx_infer)


def _scene(h, w, seed=0):
    """A smooth RGB image and thermal image with regions where each toy class wins."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([255 * xx / w, 255 * yy / h, 128 + 0 * xx], axis=2) + rng.normal(0, 3, (h, w, 3))
    thermal = 255 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2) + rng.normal(0, 3, (h, w))
    return np.clip(rgb, 0, 255).astype(np.uint8), np.clip(thermal, 0, 255).astype(np.uint8)


def _write_rgbt(path, rgb, thermal):
    Image.fromarray(np.dstack([rgb, thermal]), mode="RGBA").save(path)
    return path


def test_rgbt_png_labels_and_overlay_by_hand_without_torch(tmp_path):
    rgb, thermal = _scene(32, 48)
    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    png = _write_rgbt(tmp_path / "frame01.png", rgb, thermal)
    result = run_runner(["--model", model, "--rgbt", png, "--output", tmp_path / "out"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert loaded_forbidden(result) == []
    label = np.asarray(Image.open(tmp_path / "out" / "frame01.png"))
    expected = toy_scores(rgb, thermal.astype(np.float32)).argmax(0)
    assert label.dtype == np.uint8 and label.shape == (32, 48)
    assert set(np.unique(expected)) == {0, 1, 2}  # every class occurs: a real check
    np.testing.assert_array_equal(label, expected)
    overlay = np.asarray(Image.open(tmp_path / "out" / "frame01_overlay.png")).astype(np.float32)
    colours = np.array(CLASS_COLORS, dtype=np.float32)[expected]
    np.testing.assert_allclose(overlay, 0.5 * rgb + 0.5 * colours, atol=0.51)


def test_resize_bilinear_is_pytorch_interpolate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 17, 23)).astype(np.float32)
    for size in [(40, 64), (8, 9), (17, 23), (34, 11)]:
        ours = onnx_infer.resize_bilinear(x, size)
        ref = F.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_input_of_another_size_is_resized_and_labels_come_back_at_input_size(tmp_path):
    rgb, thermal = _scene(64, 80, seed=2)
    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    png = _write_rgbt(tmp_path / "big.png", rgb, thermal)
    assert onnx_infer.main(["--model", model, "--rgbt", str(png), "--output", str(tmp_path / "out")]) == 0
    label = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    # by hand: Pillow bilinear RGB, PyTorch bilinear thermal, toy scores, PyTorch bilinear back
    small_rgb = np.asarray(Image.fromarray(rgb).resize((48, 32), Image.BILINEAR))
    small_t = F.interpolate(torch.from_numpy(thermal.astype(np.float32))[None, None], size=(32, 48),
                            mode="bilinear", align_corners=False)[0, 0].numpy()
    scores = torch.from_numpy(toy_scores(small_rgb, small_t))[None]
    expected = F.interpolate(scores, size=(64, 80), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert label.shape == (64, 80)
    assert (label == expected).mean() >= 0.999


def test_rgb_thermal_pairs_and_input_dir(tmp_path):
    rgb, thermal = _scene(32, 48, seed=3)
    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    folder = tmp_path / "pairs"
    (folder / "rgb").mkdir(parents=True)
    (folder / "thermal").mkdir()
    Image.fromarray(rgb).save(folder / "rgb" / "a.png")
    Image.fromarray(thermal).save(folder / "thermal" / "a.png")
    assert onnx_infer.main(["--model", model, "--input-dir", str(folder), "--output", str(tmp_path / "dir")]) == 0
    assert onnx_infer.main(["--model", model, "--rgb", str(folder / "rgb" / "a.png"), "--thermal",
                            str(folder / "thermal" / "a.png"), "--output", str(tmp_path / "pair")]) == 0
    expected = toy_scores(rgb, thermal.astype(np.float32)).argmax(0)
    for out in ("dir", "pair"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / out / "a.png")), expected)


@pytest.mark.parametrize("mode,extra", [("fixed", {"value_range": (1000.0, 9000.0)}),
                                        ("percentile", {"percentiles": (2.0, 97.0)}), ("full", {})])
def test_16bit_thermal_scaling_equals_the_projects(mode, extra):
    raw = np.random.default_rng(4).integers(500, 12000, (20, 30)).astype(np.uint16)
    ours = onnx_infer.ThermalScaling(mode, extra.get("value_range", (0.0, 65535.0)),
                                     extra.get("percentiles", (1.0, 99.0)))(raw)
    theirs = ProjectThermalScaling(mode, warn_low_range=False, **extra)(raw, "x.png")
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)


def test_16bit_thermal_defaults_to_a_percentile_stretch(tmp_path):
    rgb, _ = _scene(32, 48, seed=5)
    raw = np.random.default_rng(5).integers(3000, 4000, (32, 48)).astype(np.uint16)
    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(raw).save(tmp_path / "c_t.png")
    assert onnx_infer.main(["--model", model, "--rgb", str(tmp_path / "c.png"), "--thermal", str(tmp_path / "c_t.png"),
                            "--output", str(tmp_path / "out")]) == 0
    stretched = ProjectThermalScaling("percentile")(raw, "c_t.png")
    expected = toy_scores(rgb, stretched).argmax(0)
    assert (np.asarray(Image.open(tmp_path / "out" / "c.png")) == expected).mean() >= 0.999


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_errors_are_one_line(tmp_path, capsys):
    rgb, thermal = _scene(32, 48)
    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    bare = write_toy_model(str(tmp_path / "bare.onnx"), (32, 48), metadata=False)
    Image.fromarray(rgb).save(tmp_path / "three.png")
    Image.fromarray(thermal[:16]).save(tmp_path / "short_t.png")
    out = str(tmp_path / "out")
    cases = [
        (["--model", str(tmp_path / "missing.onnx"), "--rgbt", str(tmp_path / "three.png")], "missing.onnx: model file does not exist"),
        (["--model", bare, "--rgbt", str(tmp_path / "three.png")], "bare.onnx: no HAPNet metadata"),
        (["--model", model, "--rgbt", str(tmp_path / "three.png")], "three.png: expected an 8-bit 4-channel"),
        (["--model", model, "--rgbt", str(tmp_path / "nothere.png")], "nothere.png: file does not exist"),
        (["--model", model, "--rgb", str(tmp_path / "three.png"), "--thermal", str(tmp_path / "short_t.png")],
         "short_t.png: size 48x16 (WxH) differs from the RGB image"),
    ]
    for argv, message in cases:
        assert onnx_infer.main(argv + ["--output", out]) == 1
        line = _error_line(capsys)
        assert line.startswith("error: ") and message in line, line
    (tmp_path / "corrupt.onnx").write_bytes(b"not a model")
    assert onnx_infer.main(["--model", str(tmp_path / "corrupt.onnx"), "--rgbt", "x.png", "--output", out]) == 1
    assert "corrupt.onnx: not a loadable ONNX model" in _error_line(capsys)


def test_bad_flags_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        onnx_infer.main(["--model", "m.onnx", "--rgb", "a.png", "--output", str(tmp_path)])
    assert e.value.code == 2


def test_metadata_is_read(tmp_path):
    path = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48),
                           thermal_scaling={"mode": "fixed", "range": [100.0, 200.0], "percentiles": [1.0, 99.0]})
    model = onnx_infer.ExportedModel(path)
    assert model.size == (32, 48) and model.class_names == ["red", "green", "warm"]
    assert model.colors.tolist() == CLASS_COLORS
    assert model.thermal_scaling["mode"] == "fixed"
    args = onnx_infer.get_parser().parse_args(["--model", path, "--rgbt", "x.png", "--output", "o"])
    scaling = onnx_infer.thermal_scaling_of(onnx_infer.get_parser(), args, model)
    assert scaling.mode == "fixed" and scaling.value_range == (100.0, 200.0)
    assert json.loads(json.dumps(model.thermal_scaling))["range"] == [100.0, 200.0]


def test_paired_videos(tmp_path):
    """One label PNG per frame pair (the frames as decoded, by hand) and an overlay video."""
    import cv2

    model = write_toy_model(str(tmp_path / "toy.onnx"), (32, 48))
    paths = {}
    for name in ("v", "v_ir"):
        paths[name] = str(tmp_path / f"{name}.avi")
        writer = cv2.VideoWriter(paths[name], cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 32))
        for i in range(3):
            rgb, thermal = _scene(32, 48, seed=10 + i)
            frame = rgb if name == "v" else np.dstack([thermal] * 3)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    assert onnx_infer.main(["--model", model, "--video-rgb", paths["v"], "--video-thermal", paths["v_ir"],
                            "--output", str(tmp_path / "out")]) == 0
    rgb_video, thermal_video = cv2.VideoCapture(paths["v"]), cv2.VideoCapture(paths["v_ir"])
    for i in range(3):
        rgb = cv2.cvtColor(rgb_video.read()[1], cv2.COLOR_BGR2RGB)
        thermal = cv2.cvtColor(thermal_video.read()[1], cv2.COLOR_BGR2GRAY).astype(np.float32)
        label = np.asarray(Image.open(tmp_path / "out" / f"v_{i:06d}.png"))
        np.testing.assert_array_equal(label, toy_scores(rgb, thermal).argmax(0))
    assert not (tmp_path / "out" / "v_000003.png").exists()
    assert (tmp_path / "out" / "v_overlay.mp4").stat().st_size > 0
