"""A training run killed with SIGKILL after its first checkpoint resumes where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hapnet_d2.checkpoint import safe_torch_load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ITER = 12
CHECKPOINT_PERIOD = 4
BASE_LR = 1e-3
WARMUP_ITERS = 3
WARMUP_FACTOR = 0.1
POLY_POWER = 0.9


def _train_command(output_dir, *extra):
    return [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file", os.path.join(REPO, "configs/synth/hapnet_tiny.yaml"),
        *extra,
        "MODEL.DEVICE", "cpu",
        "INPUT.CROP.SIZE", "(64, 64)",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", str(BASE_LR),
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.WARMUP_ITERS", str(WARMUP_ITERS),
        "SOLVER.WARMUP_FACTOR", str(WARMUP_FACTOR),
        "SOLVER.POLY_LR_POWER", str(POLY_POWER),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
        "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", output_dir,
    ]  # fmt: skip


def _lr_multiplier(iteration):
    """Closed form of WarmupPolyLR (hapnet_d2.solver.build_lr_scheduler)."""
    if iteration < WARMUP_ITERS:
        end = (1 - WARMUP_ITERS / MAX_ITER) ** POLY_POWER
        return WARMUP_FACTOR + (end - WARMUP_FACTOR) * iteration / WARMUP_ITERS
    return (1 - iteration / MAX_ITER) ** POLY_POWER


def _run_until_first_checkpoint(command, output_dir, timeout=600):
    """Start training, SIGKILL it as soon as a checkpoint is tagged; return the tag."""
    tag = os.path.join(output_dir, "last_checkpoint")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(os.path.join(output_dir, "first_run.out"), "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not os.path.exists(tag):
            assert process.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    with open(tag) as f:
        return f.read().strip()


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume(tmp_path):
    output_dir = str(tmp_path)
    checkpoint_name = _run_until_first_checkpoint(_train_command(output_dir), output_dir)
    assert not os.path.exists(os.path.join(output_dir, "model_final.pth"))
    saved_iteration = safe_torch_load(os.path.join(output_dir, checkpoint_name))["iteration"]
    assert saved_iteration < MAX_ITER - 1

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        _train_command(output_dir, "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with open(os.path.join(output_dir, "log.txt")) as f:
        log = f.read()
    assert f"Starting training from iteration {saved_iteration + 1}" in log

    with open(os.path.join(output_dir, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if '"lr"' in line]
    iterations = [m["iteration"] for m in metrics]
    assert min(iterations) > saved_iteration, "the resumed run repeats no iteration"
    assert max(iterations) == MAX_ITER - 1
    for m in metrics:  # the lr schedule continues from the checkpoint instead of restarting
        expected = BASE_LR * _lr_multiplier(m["iteration"])
        assert m["lr"] == pytest.approx(expected, rel=1e-6), m["iteration"]

    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    final = safe_torch_load(os.path.join(output_dir, "model_final.pth"))
    assert final["iteration"] == MAX_ITER - 1
