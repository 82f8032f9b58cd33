#!/usr/bin/env bash
# Usage: dev/install_detectron2.sh [PYTHON]   (default: python3 on PATH)
# Installs Detectron2 into PYTHON's environment, if it has none: PyPI has no upstream Detectron2,
# and the sal-detectron2 wheel that carries its Python sources (2024-08) is tagged for CPython
# 3.10, so pip refuses it on 3.11+. The wheel is pure Python: it is downloaded for 3.10 and
# unpacked with `installer`. Also installs `black`, which the wheel declares (never imported), so
# that `pip check` stays clean. Versions from requirements/constraints.txt.
set -euo pipefail
PY="${1:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
PIP="$PY -m pip --disable-pip-version-check"
if (cd / && "$PY" -c "import detectron2" >/dev/null 2>&1); then
  exit 0
fi
echo "[install] detectron2 (sal-detectron2 wheel, upstream Python sources of 2024-08)"
$PIP install -q -c "$CONSTRAINTS" installer black
VERSION=$(sed -n 's/^sal-detectron2==\([^ ]*\).*/\1/p' "$CONSTRAINTS")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
$PIP download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$TMP" "sal-detectron2==$VERSION"
"$PY" -m installer "$TMP"/sal_detectron2-"$VERSION"-*.whl
