"""Run ``train_net.py`` as a child process and collect the evaluator's results.

Used by ``tools/quickstart.py`` and ``tools/synth_ablation.py``: training runs exactly as a user
would run it (same entry point, logging with ETA, checkpoints), and the numbers come from the
``results.json`` the evaluator writes.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

from hapnet_d2.evaluation import report_dir

__all__ = ["REPO_ROOT", "train_and_evaluate", "load_results"]



def _find_checkout() -> str:
    """The checkout holding ``train_net.py`` and ``configs/``: beside the package (editable
    install), else above the running script (``<checkout>/tools/x.py`` with a non-editable
    install), else the working directory."""
    candidates = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    if sys.argv and sys.argv[0]:
        candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))
    candidates.append(os.getcwd())
    for root in candidates:
        if os.path.isfile(os.path.join(root, "train_net.py")) and os.path.isdir(os.path.join(root, "configs")):
            return root
    return candidates[-1]


REPO_ROOT = _find_checkout()


def load_results(output_dir: str, dataset_name: str, tta: bool = False) -> Dict:
    """The evaluator's ``results.json`` of ``dataset_name`` in :func:`report_dir` (with test-time
    augmentation if ``tta``)."""
    path = os.path.join(report_dir(output_dir, dataset_name, tta), "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the evaluation of {dataset_name} did not run")
    with open(path) as f:
        return json.load(f)


def train_and_evaluate(config_file: str, output_dir: str, opts: Sequence[str] = (),
                       extra_args: List[str] = ()) -> int:
    """Train and evaluate one config with ``train_net.py`` (resuming if ``output_dir`` has a
    checkpoint, so an interrupted run continues). Returns the exit code."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", config_file,
           "--resume", *extra_args, "OUTPUT_DIR", output_dir, *opts]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT)
