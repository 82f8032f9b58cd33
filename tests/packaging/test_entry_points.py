"""Every command-line entry point answers --help from another directory, and prints no
third-party warning that users cannot act on (Detectron2's and fvcore's import-time
``torch.jit.script`` FutureWarning is filtered by ``import hapnet_d2`` coming first)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY_POINTS = [
    "train_net.py",
    "demo/demo.py",
    "tools/analyze_model.py",
    "tools/benchmark.py",
    "tools/evaluate_predictions.py",
    "tools/quickstart.py",
    "tools/synth_ablation.py",
    "tools/validate_dataset.py",
    "datasets/prepare_nyu_hha.py",
    "datasets/prepare_panoptic_from_semantic.py",
    "tools/deploy/export_model.py",
    "tools/deploy/onnx_infer.py",
]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_from_another_directory_without_warnings(script, tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, script), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("script", ["demo/demo.py", "tools/validate_dataset.py"])
def test_without_detectron2_a_script_stops_with_one_line_naming_the_install_command(script, tmp_path):
    # Detectron2 hidden (None in sys.modules makes `import detectron2` fail as if not installed)
    hide_and_run = ("import runpy, sys; sys.modules['detectron2'] = None; "
                    f"sys.argv = [{os.path.join(REPO, script)!r}, '--help']; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", hide_and_run], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    install = os.path.join(REPO, "dev", "install_detectron2.sh")
    assert lines[0].startswith(f"{os.path.basename(script)}: HAPNet-D2 needs Detectron2"), lines[0]
    assert f"{install} {sys.executable}" in lines[0]
