"""Run ``train_net.py`` as a child process and collect the evaluator's results.

Used by ``tools/quickstart.py`` and ``tools/synth_ablation.py``: training runs exactly as a user
would run it (same entry point, logging with ETA, checkpoints), and the numbers come from the
``results.json`` the evaluator writes.
"""
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from hapnet_d2.evaluation import report_dir

__all__ = ["REPO_ROOT", "train_and_evaluate", "load_results", "run_child"]


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
    return run_child(cmd, cwd=REPO_ROOT)


def run_child(cmd: Sequence[str], cwd: str) -> int:
    """Run ``cmd`` and return its exit code; if this process is told to stop (SIGTERM, SIGHUP,
    Ctrl-C) while it waits, the child is stopped too (SIGTERM, then SIGKILL after 10 s) instead
    of being left running as an orphan, and this process then exits with 128 + the signal."""
    child = subprocess.Popen(list(cmd), cwd=cwd)
    stopped_at = {}  # signal number -> time it arrived

    def stop(signum, _frame):
        stopped_at.setdefault(signum, time.monotonic())
        child.terminate()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if stopped_at and time.monotonic() - min(stopped_at.values()) > 10:
                    child.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped_at:
        sys.exit(128 + next(iter(stopped_at)))
    return code
