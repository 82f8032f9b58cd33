#!/usr/bin/env bash
# Usage: dev/check_python.sh PYTHON
# Exit 0 if PYTHON is a version HAPNet-D2 supports (>= 3.10, < 3.14: torch 2.14.1 and the
# Detectron2 sources); otherwise print one line on stderr and exit 1. Downloads nothing.
PY="${1:-python3}"
NEED="HAPNet-D2 needs Python >= 3.10 and < 3.14 (set PYTHON=/path/to/python3.11)"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "install: Python interpreter '$PY' not found; $NEED" >&2; exit 1
fi
VER=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || {
  echo "install: '$PY' did not run; $NEED" >&2; exit 1; }
IFS=. read -r MAJOR MINOR _ <<<"$VER"
if ! [[ "$MAJOR" =~ ^[0-9]+$ && "$MINOR" =~ ^[0-9]+$ ]] || [ "$MAJOR" -ne 3 ] || [ "$MINOR" -lt 10 ] || [ "$MINOR" -ge 14 ]; then
  echo "install: '$PY' is Python $VER; $NEED" >&2; exit 1
fi
