"""tools/validate_dataset.py: exact counts on clean data, each problem named with exit 1."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = _load("validate_dataset_tool", REPO / "tools" / "validate_dataset.py")
writers = _load(
    "rgbt_dataset_writers_for_tools", REPO / "tests" / "data" / "rgbt_dataset_writers.py"
)


def _run(capsys, *args):
    code = validator.main(list(args))
    return code, capsys.readouterr().out


def _expected_counts(samples, num_classes, offset=0):
    counts = np.zeros(num_classes + 1, np.int64)
    for *_, label in samples.values():
        ids = label.astype(np.int64) - offset
        ids[(ids < 0) | (label == 255)] = 255
        counts[:num_classes] += np.bincount(ids[ids != 255], minlength=num_classes)
        counts[-1] += (ids == 255).sum()
    return counts


@pytest.mark.parametrize(
    "fmt,writer,num_classes,offset",
    [
        ("mfnet", "write_mfnet", 9, 0),
        ("pst900", "write_pst900", 5, 0),
        ("kp", "write_kp", 19, 0),
        ("nyu", "write_nyu", 40, 1),
    ],
)
def test_clean_dataset_exact_counts(tmp_path, capsys, fmt, writer, num_classes, offset):
    samples = getattr(writers, writer)(str(tmp_path))
    code, out = _run(capsys, "--format", fmt, "--root", str(tmp_path), "--split", "train")
    assert code == 0 and out.rstrip().endswith("OK")
    assert f"samples: {len(samples)}" in out and f"image size 8x6 (WxH): {len(samples)}" in out
    counts = _expected_counts(samples, num_classes, offset)
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [int(line[-1]) for line in lines] == counts.tolist()


def test_rgbx_clean_via_subprocess(tmp_path):
    writers.write_rgbx(str(tmp_path), num_classes=3)
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "validate_dataset.py"), "--format", "rgbx", "--root",
         str(tmp_path), "--split", "train", "--num-classes", "3"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "samples: 2" in result.stdout


def _break(root, problem):
    """Damage a clean MFNet-layout dataset; return the file the report must name."""
    images, labels = Path(root, "images"), Path(root, "labels")
    if problem == "truncated":
        data = (images / "00001D.png").read_bytes()
        (images / "00001D.png").write_bytes(data[: len(data) // 2])
        return images / "00001D.png", "truncated"
    if problem == "unreadable":
        (images / "00001D.png").write_bytes(b"not an image")
        return images / "00001D.png", "unreadable"
    if problem == "missing_label":
        (labels / "00002N.png").unlink()
        return labels / "00002N.png", "does not exist"
    if problem == "listed_without_files":
        with open(Path(root, "train.txt"), "a") as f:
            f.write("09999D\n")
        return images / "09999D.png", "does not exist"
    if problem == "size_mismatch":
        Image.fromarray(np.zeros((5, 8), np.uint8)).save(labels / "00001D.png")
        return labels / "00001D.png", "differs from the image"
    if problem == "wrong_channels":
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(images / "00001D.png")
        return images / "00001D.png", "4-channel"
    if problem == "label_out_of_range":
        label = np.array(Image.open(labels / "00002N.png"))
        label[1, 1] = 12
        Image.fromarray(label).save(labels / "00002N.png")
        return labels / "00002N.png", "label ids [12] outside 0..8 and not 255"
    if problem == "empty_list":
        Path(root, "train.txt").write_text("\n")
        return Path(root), "empty split list"
    raise ValueError(problem)


@pytest.mark.parametrize(
    "problem",
    ["truncated", "unreadable", "missing_label", "listed_without_files", "size_mismatch",
     "wrong_channels", "label_out_of_range", "empty_list"],
)  # fmt: skip
def test_each_problem_named_with_exit_1(tmp_path, capsys, problem):
    writers.write_mfnet(str(tmp_path))
    path, reason = _break(str(tmp_path), problem)
    code, out = _run(capsys, "--format", "mfnet", "--root", str(tmp_path), "--split", "train")
    assert code == 1
    report = out.split("PROBLEMS", 1)[1]
    assert any(str(path) in line and reason in line for line in report.splitlines()), out


def test_missing_thermal_for_separate_layout(tmp_path, capsys):
    writers.write_pst900(str(tmp_path))
    missing = tmp_path / "train" / "thermal" / "7_fire.png"
    missing.unlink()
    code, out = _run(capsys, "--format", "pst900", "--root", str(tmp_path), "--split", "train")
    assert code == 1 and f"{missing}: file does not exist" in out


def test_missing_list_file(tmp_path, capsys):
    code, out = _run(capsys, "--format", "kp", "--root", str(tmp_path), "--split", "val")
    assert code == 1 and f"{tmp_path / 'val.txt'}: split list does not exist" in out


def _synth_panoptic(tmp_path):
    from hapnet_d2.data.synth import SynthSpec, ensure_synth_dataset
    from hapnet_d2.data.synth.panoptic import ensure_synth_panoptic

    root = tmp_path / "synth_rgbt"
    ensure_synth_dataset(str(root), SynthSpec(seed=2, num_train=2, num_val=0, num_test=2))
    ensure_synth_panoptic(str(root))
    return root, root / "panoptic" / "panoptic_train.json"


@pytest.mark.parametrize("problem", ["clean", "extra_id", "unknown_category", "missing_png", "size"])
def test_panoptic_labels_checked_and_named(tmp_path, capsys, problem):
    import json

    root, pan_json = _synth_panoptic(tmp_path)
    png = root / "panoptic" / "00001D.png"
    data = json.loads(pan_json.read_text())
    if problem == "extra_id":
        rgb = np.array(Image.open(png))
        rgb[0, 0] = (7, 1, 0)  # id 263, listed nowhere
        Image.fromarray(rgb).save(png)
        expect = (str(png), "segment ids [263] not in the JSON")
    elif problem == "unknown_category":
        data["annotations"][0]["segments_info"][0]["category_id"] = 77
        pan_json.write_text(json.dumps(data))
        expect = (str(pan_json), "unknown category ids [77]")
    elif problem == "missing_png":
        png.unlink()
        expect = (str(png), "does not exist")
    elif problem == "size":
        Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(png)
        expect = (str(png), "differs from the image")
    args = ["--format", "mfnet", "--root", str(root), "--split", "train",
            "--panoptic-json", str(pan_json)]  # fmt: skip
    code, out = _run(capsys, *args)
    if problem == "clean":
        assert code == 0 and out.rstrip().endswith("OK"), out
        return
    assert code == 1
    report = out.split("PROBLEMS", 1)[1]
    assert any(expect[0] in line and expect[1] in line for line in report.splitlines()), out
