"""16-bit thermal (raw counts) reaches the model on the 0-255 scale the user chose: full range,
a fixed range of counts or per-image percentiles; through the mapper and through the demo.
8-bit thermal is unchanged by every mode."""

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from PIL import Image

from conftest import REPO
from hapnet_d2.config import ConfigError, add_hapnet_config
from hapnet_d2.data import RGBTSemanticDatasetMapper
from hapnet_d2.data.io import ThermalScaling, ThermalStats, read_rgbt

H, W = 48, 64
FOURTEEN_BIT = 16383
TINY_CONFIG = os.path.join(REPO, "configs", "synth", "hapnet_tiny.yaml")


class Records(logging.Handler):
    """Collects the messages of the loggers it is attached to."""

    def __init__(self, *names):
        super().__init__(logging.DEBUG)
        self.messages, self.loggers = [], [logging.getLogger(n) for n in names]

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        for logger in self.loggers:
            logger.addHandler(self)
            self.levels = getattr(self, "levels", []) + [logger.level]
            logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        for logger, level in zip(self.loggers, self.levels):
            logger.removeHandler(self)
            logger.setLevel(level)


def _fourteen_bit_ramp():
    """A 14-bit camera frame: every count 0..16383 spread over the image, as uint16."""
    return np.linspace(0, FOURTEEN_BIT, H * W).round().astype(np.uint16).reshape(H, W)


def _write_pair(folder, thermal, name="frame"):
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    Image.fromarray(thermal).save(folder / f"{name}_ir.png")  # uint16 -> a 16-bit PNG
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / f"{name}_label.png")
    return {
        "file_name": str(folder / f"{name}.png"),
        "thermal_file_name": str(folder / f"{name}_ir.png"),
        "sem_seg_file_name": str(folder / f"{name}_label.png"),
        "rgbt_layout": "separate",
        "height": H,
        "width": W,
    }


def _mapper(**keys):
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.INPUT.BASE_SIZE = (H, W)  # test mode: no resize
    for key, value in keys.items():
        setattr(cfg.INPUT, key, value)
    return RGBTSemanticDatasetMapper(cfg, is_train=False)


def _span(thermal):
    return float(thermal.max() - thermal.min())


def test_the_png_really_is_16_bit(tmp_path):
    d = _write_pair(tmp_path, _fourteen_bit_ramp())
    with Image.open(d["thermal_file_name"]) as image:
        assert image.mode.startswith("I;16") or image.mode == "I"
    stats = ThermalStats()
    read_rgbt(d, thermal_stats=stats)
    assert stats.bit_depths == {16: 1} and (stats.min, stats.max) == (0, FOURTEEN_BIT)
    assert stats.summary() == "16-bit (1 images), raw values 0..16383"


def test_fixed_range_through_the_mapper(tmp_path):
    raw = _fourteen_bit_ramp()
    d = _write_pair(tmp_path, raw)
    with Records("hapnet_d2.data.io") as log:
        thermal = _mapper(THERMAL_SCALING="fixed", THERMAL_RANGE=(0.0, float(FOURTEEN_BIT)))(d)["thermal"]
    assert thermal.shape == (3, H, W)
    assert _span(thermal) >= 0.9 * 255
    # by hand: count c -> c * 255 / 16383
    np.testing.assert_allclose(thermal[0].numpy(), raw.astype(np.float64) * 255 / FOURTEEN_BIT, rtol=1e-6, atol=1e-4)
    assert log.messages == [], "the frame uses its whole fixed range"


def test_fixed_range_clips_counts_outside(tmp_path):
    raw = np.array([[0, 1000, 2000, 3000]], np.uint16)
    out = ThermalScaling("fixed", (1000, 2000))(raw, "x.png")
    np.testing.assert_array_equal(out, np.float32([[0.0, 0.0, 255.0, 255.0]]))


def test_percentile_through_the_mapper(tmp_path):
    d = _write_pair(tmp_path, _fourteen_bit_ramp())
    thermal = _mapper(THERMAL_SCALING="percentile", THERMAL_PERCENTILES=(1.0, 99.0))(d)["thermal"]
    assert _span(thermal) >= 0.9 * 255
    assert float(thermal.min()) == 0.0 and float(thermal.max()) == 255.0


def test_percentile_values_by_hand():
    """Counts 0..100: the 10th and 90th percentiles are 10 and 90 exactly (linear interpolation),
    so count c becomes clip((c - 10) * 255 / 80, 0, 255)."""
    raw = np.arange(101, dtype=np.uint16).reshape(1, 101)
    out = ThermalScaling("percentile", percentiles=(10, 90))(raw, "x.png")
    expected = np.clip((np.arange(101) - 10) * 255 / 80, 0, 255)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-4)


def test_percentile_of_a_uniform_image_is_zero():
    out = ThermalScaling("percentile")(np.full((4, 4), 7000, np.uint16), "flat.png")
    np.testing.assert_array_equal(out, np.zeros((4, 4), np.float32))


def test_full_scale_warns_once_per_file(tmp_path):
    raw = _fourteen_bit_ramp()
    d = _write_pair(tmp_path, raw)
    mapper = _mapper()  # THERMAL_SCALING "full" (the default): / 65535
    with Records("hapnet_d2.data.io") as log:
        thermal = mapper(d)["thermal"]
        mapper(d)
    np.testing.assert_allclose(thermal[0].numpy(), raw.astype(np.float64) * 255 / 65535, rtol=1e-6, atol=1e-4)
    assert _span(thermal) < 64, "16383 / 65535 of 255: nearly black"
    assert len(log.messages) == 1, log.messages
    (message,) = log.messages
    assert d["thermal_file_name"] in message and "\n" not in message
    assert "uses 25% of its full scale 0..65535 (values 0..16383)" in message
    assert "INPUT.THERMAL_SCALING" in message


def test_fixed_range_much_wider_than_the_image_warns(tmp_path):
    with Records("hapnet_d2.data.io") as log:
        ThermalScaling("fixed", (0, 65535))(_fourteen_bit_ramp(), str(tmp_path / "a.png"))
        ThermalScaling("fixed", (0, 40000))(_fourteen_bit_ramp(), str(tmp_path / "b.png"))  # 41%: fine
    assert len(log.messages) == 1 and "a.png" in log.messages[0] and "fixed range 0..65535" in log.messages[0]


@pytest.mark.parametrize("mode", ["full", "fixed", "percentile"])
def test_eight_bit_thermal_is_unchanged_by_every_mode(tmp_path, mode):
    raw = np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8)
    d = _write_pair(tmp_path, raw)
    thermal = _mapper(THERMAL_SCALING=mode, THERMAL_RANGE=(100.0, 200.0))(d)["thermal"]
    np.testing.assert_array_equal(thermal[0].numpy(), raw.astype(np.float32))  # raw * 255 / 255


@pytest.mark.parametrize(
    "keys, reason",
    [
        ({"THERMAL_SCALING": "agc"}, "mode must be one of"),
        ({"THERMAL_SCALING": "fixed", "THERMAL_RANGE": (500.0, 100.0)}, "needs min < max"),
        ({"THERMAL_SCALING": "percentile", "THERMAL_PERCENTILES": (5.0, 120.0)}, "0 <= low < high <= 100"),
    ],
)
def test_bad_scaling_keys_are_config_errors(keys, reason):
    with pytest.raises(ConfigError, match=reason) as error:
        _mapper(**keys)
    assert "INPUT.THERMAL_SCALING" in str(error.value)


# ----------------------------------------------------------------------------- the demo


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo_cli(monkeypatch):
    """demo/demo.py with a stand-in for the model that records the thermal it is given."""
    demo_dir = Path(REPO) / "demo"
    predictor = sys.modules.get("predictor") or _load("predictor", demo_dir / "predictor.py")
    monkeypatch.setitem(sys.modules, "predictor", predictor)
    module = _load("demo_cli_thermal", demo_dir / "demo.py")
    seen = []

    class RecordingDemo:
        def __init__(self, cfg, metadata):
            self.metadata = metadata

        def predict_and_draw(self, rgb, thermal):
            seen.append(thermal)
            return {"panel": np.zeros((2, 2, 3), np.uint8), "label": np.zeros(rgb.shape[:2], np.uint8),
                    "panoptic": None}

    monkeypatch.setattr(module, "RGBTVisualizationDemo", RecordingDemo)
    module.seen = seen
    return module


def _run_demo(demo_cli, tmp_path, *flags):
    d = _write_pair(tmp_path, _fourteen_bit_ramp())
    argv = ["--config-file", TINY_CONFIG, "--rgb", d["file_name"], "--thermal", d["thermal_file_name"],
            "--output", str(tmp_path / "out"), "--random-weights", *flags, "--opts", "MODEL.DEVICE", "cpu"]
    with Records("hapnet_demo", "hapnet_d2.data.io") as log:
        assert demo_cli.main(argv) == 0
    (thermal,) = demo_cli.seen
    return thermal, log.messages


def test_demo_default_for_16_bit_is_percentile_with_a_notice(demo_cli, tmp_path):
    thermal, messages = _run_demo(demo_cli, tmp_path)
    assert _span(thermal) >= 0.9 * 255
    notices = [m for m in messages if "16-bit thermal" in m]
    assert len(notices) == 1 and "percentiles 1-99 -> 0-255" in notices[0] and "--thermal-scaling" in notices[0]


def test_demo_fixed_range(demo_cli, tmp_path):
    thermal, messages = _run_demo(demo_cli, tmp_path, "--thermal-range", "0", str(FOURTEEN_BIT))
    assert _span(thermal) >= 0.9 * 255
    np.testing.assert_allclose(thermal, _fourteen_bit_ramp().astype(np.float64) * 255 / FOURTEEN_BIT, atol=1e-3)
    assert not [m for m in messages if "percentile" in m or "uses" in m]


def test_demo_full_scale_warns(demo_cli, tmp_path):
    thermal, messages = _run_demo(demo_cli, tmp_path, "--thermal-scaling", "full")
    assert _span(thermal) < 64
    warnings = [m for m in messages if "16-bit thermal uses" in m]
    assert len(warnings) == 1 and "_ir.png" in warnings[0]


def test_demo_rejects_contradicting_flags(demo_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_demo(demo_cli, tmp_path, "--thermal-scaling", "full", "--thermal-range", "0", "100")
    assert exit_info.value.code == 2
    assert "--thermal-range needs --thermal-scaling fixed" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_on_a_16_bit_pair(tmp_path):
    """The real demo process (tiny model, random weights) on a 14-bit frame: the notice, exit 0."""
    d = _write_pair(tmp_path, _fourteen_bit_ramp())
    result = subprocess.run(
        [sys.executable, "demo/demo.py", "--config-file", TINY_CONFIG, "--rgb", d["file_name"],
         "--thermal", d["thermal_file_name"], "--output", str(tmp_path / "out"), "--random-weights",
         "--opts", "MODEL.DEVICE", "cpu"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "16-bit thermal (frame): each image is stretched, percentiles 1-99 -> 0-255" in result.stdout
    assert (tmp_path / "out" / "frame_label.png").exists()
