"""Run tools/deploy/onnx_infer.py in a fresh Python process where torch, torchvision,
Detectron2 and hapnet_d2 cannot be imported, and report which modules it loaded."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tools" / "deploy" / "onnx_infer.py"
FORBIDDEN = ("torch", "torchvision", "detectron2", "hapnet_d2")

_BOOTSTRAP = """
import importlib.abc, runpy, sys
FORBIDDEN = {forbidden!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = {argv!r}
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(FORBIDDEN))
print("LOADED_FORBIDDEN=" + ",".join(loaded), flush=True)
sys.exit(code)
"""


def run_runner(args, cwd, threads: int = 1) -> subprocess.CompletedProcess:
    """``onnx_infer.py *args`` in a subprocess without torch; ``stdout`` ends with a line
    ``LOADED_FORBIDDEN=`` naming any forbidden top-level module found in ``sys.modules``."""
    argv = [str(RUNNER), *map(str, args), "--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = str(threads)
    code = _BOOTSTRAP.format(forbidden=FORBIDDEN, argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=600)


def loaded_forbidden(result: subprocess.CompletedProcess) -> list:
    """The forbidden modules the runner process had loaded (from its last stdout line)."""
    line = [s for s in result.stdout.splitlines() if s.startswith("LOADED_FORBIDDEN=")][-1]
    return [m for m in line.split("=", 1)[1].split(",") if m]
