#!/usr/bin/env bash
# Creates .venv and installs preftune with its test tools. On a machine without an NVIDIA GPU it installs
# the CPU build of torch first, so pip never pulls the multi-GB CUDA build; with a GPU, pip's default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch>=2.4"
  else
    # This workplace serves the CPU wheel of 2.13.0 from local disk (pip's find-links); elsewhere, set
    # PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to get a CPU build.
    .venv/bin/pip install -q torch==2.13.0
  fi
fi
# The deepspeed extra is installed too so its strategy's tests run here (pure Python; its CPU comm op is
# compiled with ninja on first use, about 40 s once); the demo extra is what `preftune demo` needs.
.venv/bin/pip install -q -e ".[dev,deepspeed,demo]"
