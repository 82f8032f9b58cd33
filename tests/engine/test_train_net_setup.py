"""Command-line setup of train_net.py: the unsafe-checkpoint opt-in, the CPU fallback and the
OpenMP wait default."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(train_net, tmp_path, *extra):
    args = train_net.get_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs/synth/hapnet_tiny.yaml"), *extra]
        + ["OUTPUT_DIR", str(tmp_path)]
    )
    return train_net.setup(args)


def test_unsafe_checkpoints_are_opt_in(train_net, tmp_path):
    assert not _setup(train_net, tmp_path / "default").MODEL.ALLOW_UNSAFE_CHECKPOINTS
    cfg = _setup(train_net, tmp_path / "opt_in", "--allow-unsafe-checkpoint")
    assert cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS
    assert cfg.is_frozen()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of CPU-only machines")
def test_cuda_falls_back_to_cpu(train_net, tmp_path):
    cfg = _setup(train_net, tmp_path, "MODEL.DEVICE", "cuda")
    assert cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "10000"),  # nothing chosen: a short spin
        ({"OMP_WAIT_POLICY": "PASSIVE"}, None),  # the user's policy is kept (a spin count would override it)
        ({"GOMP_SPINCOUNT": "0"}, "0"),  # the user's spin count is kept
    ],
)
def test_openmp_spin_default(env, expected):
    """train_net.py bounds how long OpenMP threads spin unless the user chose a wait policy."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import os, runpy\n"
        f"runpy.run_path({os.path.join(REPO, 'train_net.py')!r}, run_name='train_net')\n"
        "print(os.environ.get('GOMP_SPINCOUNT'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == str(expected)
