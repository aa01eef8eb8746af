#!/usr/bin/env bash
# Creates bench/.venv-trl: the peer (TRL) in its own environment, with the same torch CPU build and the same
# transformers as preftune's venv, so the comparison differs only in the trainer. Idempotent: rerun it freely.
#
# Pins (checked on 2026-11-24): trl 1.16.0 requires transformers>=4.56.2, so it takes preftune's 5.23.0 as is.
set -euo pipefail

TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.23.0
TRL_VERSION=1.16.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-trl"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip

# As scripts/setup.sh: without a GPU this workplace serves the CPU wheel of torch from local disk (pip's
# find-links); elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU build.
"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" "transformers==$TRANSFORMERS_VERSION" "trl==$TRL_VERSION"
"$venv/bin/python" - <<'PY'
import torch, transformers, trl
print(f"bench/.venv-trl ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY
