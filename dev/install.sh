#!/usr/bin/env bash
# Installs HAPNet-D2 and its dependencies into .venv, skipping what is already present.
# The route: torch 2.14.1 (CUDA build, runs on CPU too),
# detectron2 from the sal-detectron2 PyPI wheel, torch-ms-deform-attn compiled against torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN="${PYTHON:-python3}"
VENV="${VENV:-$(pwd)/.venv}"
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"

# import check run outside the repository, so that ./hapnet_d2 does not count as installed
has() { (cd / && "$PY" - "$1") <<'PYEOF' >/dev/null 2>&1
import importlib, sys
importlib.import_module(sys.argv[1])
PYEOF
}

# the Python version first, before anything is created or downloaded (one line, exit 1)
if [ -x "$PY" ]; then dev/check_python.sh "$PY" || exit 1; else dev/check_python.sh "$PYTHON_BIN" || exit 1; fi

if [ ! -x "$PY" ]; then
  echo "[install] creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

if ! "$PY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" >/dev/null 2>&1; then
  echo "[install] torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
fi

# the tested versions: one place, requirements/constraints.txt
CONSTRAINTS="$(pwd)/requirements/constraints.txt"

echo "[install] runtime dependencies (versions from requirements/constraints.txt)"
$PIP install -q -c "$CONSTRAINTS" numpy opencv-python-headless ml_dtypes timm fvcore iopath pycocotools \
  termcolor yacs tabulate cloudpickle tqdm omegaconf hydra-core matplotlib tensorboard packaging \
  pillow scipy panopticapi-lite scikit-image onnx onnxruntime onnxscript pytest pytest-xdist installer wheel setuptools

# Detectron2 (the sal-detectron2 wheel, unpacked: pip refuses its cp310 tag on 3.11+) and black
dev/install_detectron2.sh "$PY"

if ! has torch_ms_deform_attn; then
  echo "[install] torch-ms-deform-attn (compiles the C++ op against the installed torch, ~30 s)"
  # optional: if the build fails, the PyTorch (grid_sample) path takes over; warn, do not abort
  if ! $PIP install -q --no-build-isolation -c "$CONSTRAINTS" torch-ms-deform-attn >"$VENV/ms-deform-attn-build.log" 2>&1; then
    echo "[install] WARNING: building torch-ms-deform-attn failed (log: $VENV/ms-deform-attn-build.log); HAPNet-D2 uses the slower PyTorch deformable attention instead"
  fi
fi

if ! $PIP show -q hapnet_d2 >/dev/null 2>&1; then
  echo "[install] hapnet_d2 (editable)"
  $PIP install -q --no-build-isolation --no-deps -e .
fi
echo "[install] done: $("$PY" -c 'import torch, detectron2, timm; print("torch", torch.__version__, "detectron2", detectron2.__version__, "timm", timm.__version__)')"
