"""Checkpoints that do not fit the model are refused for inference (checkpointer, demo,
``train_net.py --eval-only``); corrupt and non-weights files give the unpickler's reason."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REPO, load_cfg
from hapnet_d2.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    HAPNetCheckpointer,
    safe_torch_load,
)

TINY_CONFIG = os.path.join(REPO, "configs", "synth", "hapnet_tiny.yaml")


class Net(nn.Module):
    """27 floating-point values: body 4x3 + 3 (15), norm 3 + 3 + running mean/var 3 + 3 (12)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)


class BigNet(nn.Module):
    """10,100 values in ``big`` and 2 in ``small``: ``small`` alone is 0.0198% of the model."""

    def __init__(self, small_out=1):
        super().__init__()
        self.big = nn.Linear(100, 100)
        self.small = nn.Linear(1, small_out)


def _save(path, state):
    torch.save({"model": state}, str(path))
    return str(path)


def test_file_matching_no_key_is_refused_with_count_and_prefixes(tmp_path):
    path = _save(tmp_path / "other_model.pth", {"encoder.layer.weight": torch.zeros(3, 4)})
    with pytest.raises(CheckpointMismatchError) as error:
        HAPNetCheckpointer(Net(), max_unloaded_fraction=0.01).load(path)
    message = str(error.value)
    assert "\n" not in message
    assert path in message
    # 27 float values, by hand; num_batches_tracked (an integer) is not a parameter value
    assert "27 of the model's 27 parameter values (100.0%)" in message
    # the three largest groups, ties broken by name (not by set order, which varies per process)
    assert "e.g. body.weight.* (12), body.bias.* (3), norm.bias.* (3)" in message
    assert "encoder.layer.*" in message  # the file's own keys, to recognise what it is
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS True" in message


def test_small_unloaded_share_is_accepted_and_loaded(tmp_path):
    source = BigNet()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("small.")}
    path = _save(tmp_path / "almost.pth", state)  # 2 of 10,102 values missing: 0.02%
    target = BigNet()
    HAPNetCheckpointer(target, max_unloaded_fraction=0.01).load(path)
    assert torch.equal(target.big.weight, source.big.weight)


def test_threshold_is_on_the_share_of_values(tmp_path):
    source = BigNet(small_out=120)  # small: 240 values of 10,340 = 2.3% > 1%
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("small.")}
    path = _save(tmp_path / "partial.pth", state)
    with pytest.raises(CheckpointMismatchError, match=r"240 of the model's 10,340 parameter values \(2\.3%\)"):
        HAPNetCheckpointer(BigNet(small_out=120), max_unloaded_fraction=0.01).load(path)
    HAPNetCheckpointer(BigNet(small_out=120), max_unloaded_fraction=0.05).load(path)


def test_wrong_shapes_count_as_unloaded(tmp_path):
    state = BigNet(small_out=1).state_dict()
    state["big.weight"] = torch.zeros(50, 100)  # 10,000 of 10,102 values of another shape
    path = _save(tmp_path / "shapes.pth", state)
    with pytest.raises(CheckpointMismatchError, match=r"10,000 of the model's 10,102 .*1 tensors have another shape"):
        HAPNetCheckpointer(BigNet(), max_unloaded_fraction=0.01).load(path)


def test_partial_loading_stays_possible(tmp_path):
    """Training (no limit, Detectron2's behaviour) and MODEL.ALLOW_PARTIAL_WEIGHTS load a
    backbone-only file; for_inference applies the config's limit otherwise."""
    source = BigNet(small_out=120)
    path = _save(tmp_path / "backbone_only.pth", {"small.weight": source.small.weight.detach()})
    trained = BigNet(small_out=120)
    HAPNetCheckpointer(trained).load(path)  # the trainer's checkpointer: no limit
    assert torch.equal(trained.small.weight, source.small.weight)

    cfg = load_cfg("configs/synth/hapnet_tiny.yaml")
    with pytest.raises(CheckpointMismatchError, match="backbone_only.pth"):
        HAPNetCheckpointer.for_inference(BigNet(small_out=120), cfg).load(path)
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = True
    HAPNetCheckpointer.for_inference(BigNet(small_out=120), cfg).load(path)
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    cfg.MODEL.WEIGHTS_MAX_UNLOADED_FRACTION = 1.0
    HAPNetCheckpointer.for_inference(BigNet(small_out=120), cfg).load(path)


def test_resume_of_own_checkpoint_fits(tmp_path):
    model = Net()
    HAPNetCheckpointer(model, str(tmp_path)).save("model_final", iteration=3)
    restored = Net()
    extra = HAPNetCheckpointer(restored, str(tmp_path), max_unloaded_fraction=0.0).resume_or_load("", resume=True)
    assert extra["iteration"] == 3
    assert torch.equal(restored.body.weight, model.body.weight)


def _corrupt_files(tmp_path):
    torch.save({"w": torch.randn(50, 50)}, str(tmp_path / "full.pth"))
    full = (tmp_path / "full.pth").read_bytes()
    files = {
        "text.pth": b"hello, this is not a checkpoint\n",
        "empty.pth": b"",
        "truncated.pth": full[: len(full) // 2],
        "plain_pickle.pth": pickle.dumps({"w": [1, 2, 3]}, protocol=4),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return files


@pytest.mark.parametrize(
    "name, reason",
    [
        ("text.pth", "neither a zip archive (torch.save) nor a pickle"),
        ("empty.pth", "it is empty (0 bytes)"),
        ("truncated.pth", "a truncated or damaged zip archive"),
        ("plain_pickle.pth", "unpickling failed: Unsupported operand 149"),
    ],
)
def test_corrupt_file_gives_the_reason_not_torchs_advice(tmp_path, name, reason):
    _corrupt_files(tmp_path)
    with pytest.raises(CheckpointError) as error:
        safe_torch_load(str(tmp_path / name))
    message = str(error.value)
    assert str(tmp_path / name) in message and reason in message, message
    assert "\n" not in message
    assert "weights_only" not in message and "Re-running" not in message


@pytest.mark.parametrize(
    "content, reason",
    [(torch.zeros(3), "it holds a Tensor, not a state dict"), ({"model": {"w": "text"}}, "entry 'w' is a str")],
)
def test_non_weights_file_is_refused(tmp_path, content, reason):
    path = str(tmp_path / "not_weights.pth")
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=reason):
        HAPNetCheckpointer(Net()).load(path)


# ----------------------------------------------------------------------------- command lines


def _run(args, cwd=REPO, **env):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _last_line(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def mismatching_checkpoint(tmp_path):
    return _save(tmp_path / "someone_elses.pth", {"encoder.weight": torch.zeros(8, 8)})


@pytest.fixture
def rgbt_png(tmp_path):
    path = tmp_path / "pair.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 4), dtype=np.uint8)).save(path)
    return str(path)


def _demo(tmp_path, rgbt_png, *extra):
    return _run([os.path.join("demo", "demo.py"), "--config-file", TINY_CONFIG, "--rgbt", rgbt_png,
                 "--output", str(tmp_path / "out"), *extra])


@pytest.mark.slow
def test_demo_refuses_a_checkpoint_that_does_not_fit(tmp_path, mismatching_checkpoint, rgbt_png):
    result = _demo(tmp_path, rgbt_png, "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", mismatching_checkpoint)
    assert result.returncode == 1
    line = _last_line(result)
    assert line.startswith("error: Refusing checkpoint") and mismatching_checkpoint in line, line
    assert "(100.0%) unloaded" in line
    assert not (tmp_path / "out" / "pair_label.png").exists(), "no label map from random weights"


@pytest.mark.slow
def test_demo_corrupt_checkpoint_is_one_line(tmp_path, rgbt_png):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"definitely not a checkpoint")
    result = _demo(tmp_path, rgbt_png, "--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(corrupt))
    assert result.returncode == 1
    line = _last_line(result)
    assert str(corrupt) in line and "not a PyTorch checkpoint" in line and "weights_only" not in line, line


def test_demo_refuses_empty_weights_without_the_flag(tmp_path, rgbt_png):
    result = _demo(tmp_path, rgbt_png, "--opts", "MODEL.DEVICE", "cpu")
    assert result.returncode == 2
    line = _last_line(result)
    assert "MODEL.WEIGHTS is empty" in line and "--random-weights" in line, line


@pytest.mark.slow
def test_demo_random_weights_on_request(tmp_path, rgbt_png):
    result = _demo(tmp_path, rgbt_png, "--random-weights", "--opts", "MODEL.DEVICE", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "pair_label.png").exists()


@pytest.mark.slow
def test_eval_only_refuses_a_checkpoint_that_does_not_fit(tmp_path, mismatching_checkpoint):
    result = _run(["train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                   "MODEL.WEIGHTS", mismatching_checkpoint, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")])
    assert result.returncode == 1
    line = _last_line(result)
    assert line.startswith("error: Refusing checkpoint") and mismatching_checkpoint in line, line
    assert "(100.0%) unloaded" in line and "backbone." in line
