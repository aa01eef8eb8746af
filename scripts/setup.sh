#!/usr/bin/env bash
# Makes .venv and installs preftune into it (editable) with what one use needs:
#   bash scripts/setup.sh         the demos: extra `demo`
#   bash scripts/setup.sh --dev   the tests, lint and type check: extras dev, deepspeed, demo, lora
# A rerun with nothing new to install needs no network: a stamp in .venv records the extras installed for
# this pyproject.toml and this script, and pip runs only when the stamp differs or a requirement is missing.
# Without an NVIDIA GPU, torch comes from PyTorch's CPU wheel index (TORCH_CPU_INDEX overrides its address),
# so pip does not pull the multi-GB CUDA build there; with a GPU, pip's default build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash scripts/setup.sh [--dev]"
extras=demo
if [ $# -gt 1 ]; then echo "$usage" >&2; exit 2; fi
case "${1:-}" in
  "") ;;
  --dev) extras=dev,deepspeed,demo,lora ;;
  -h | --help) echo "$usage"; exit 0 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
py=.venv/bin/python
stamp=.venv/preftune-setup.stamp

# What the stamp must match: the requirements (pyproject.toml) and the way they are installed (this script).
fingerprint=$("$py" -c '
import hashlib, sys
h = hashlib.sha256()
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        h.update(f.read())
print(h.hexdigest())' pyproject.toml scripts/setup.sh)
stamped_extras="" stamped_fingerprint=""
if [ -f "$stamp" ]; then
  stamped_extras=$(sed -n 's/^extras //p' "$stamp")
  stamped_fingerprint=$(sed -n 's/^fingerprint //p' "$stamp")
fi

# Exits non-zero, saying why, unless preftune is installed from this checkout with every requirement of its
# base and of the extras in $1 present at a matching version. It reads installed metadata only (no imports of
# the packages, no pip), so it takes a fraction of a second; it catches a .venv changed by hand since the stamp.
installed_ok() {
  "$py" - "$1" <<'EOF'
import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement  # a dependency of transformers
except ImportError:
    sys.exit("packaging is not installed")

spec = importlib.util.find_spec("preftune")
here = (Path.cwd() / "src" / "preftune" / "__init__.py").resolve()
if spec is None or spec.origin is None or Path(spec.origin).resolve() != here:
    sys.exit(f"preftune is not installed from {here.parent.parent.parent}")
extras = [""] + sys.argv[1].split(",")
for line in md.requires("preftune") or []:
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(f"{req.name} is not installed")
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(f"{req.name} {version} does not satisfy {req}")
EOF
}

# Up to date: the stamp matches, it covers the extras asked for, and the packages are really there.
if [ -z "$stamped_fingerprint" ]; then
  echo "setup: installing into .venv (extras $extras)"
elif [ "$stamped_fingerprint" != "$fingerprint" ]; then
  echo "setup: pyproject.toml or scripts/setup.sh changed since the last setup; installing again"
else
  missing=$(tr , '\n' <<<"$extras" | grep -vxF -f <(tr , '\n' <<<"$stamped_extras") | paste -sd, - || true)
  if [ -n "$missing" ]; then
    echo "setup: adding extras $missing to .venv"
  elif why=$(installed_ok "$extras" 2>&1); then
    echo "setup: .venv is up to date (extras $stamped_extras); nothing to install"
    exit 0
  else
    echo "setup: installing again: $why"
  fi
fi
# Keep the extras installed before, so `setup.sh` after `setup.sh --dev` leaves a dev .venv a dev .venv.
extras=$(tr , '\n' <<<"$extras${stamped_extras:+,$stamped_extras}" | sort -u | paste -sd, -)

# Everything from here on needs the package index; a current pip first, as it resolves and builds preftune.
"$py" -m pip install -q --upgrade pip
if ! "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$py" -m pip install -q "torch>=2.4"
  else
    # PyTorch's CPU index has the torch wheel without CUDA libraries; --index-url replaces pip's default index
    # for this one install, while find-links and extra indexes from pip's configuration still apply (on this
    # project's machines the CPU wheel comes from local find-links). --no-deps: torch's own dependencies come
    # from pip's usual index in the install of preftune below. The short timeout and single retry bound an
    # index that does not answer to about 20 s (measured), where pip's default 15 s x 5 retries takes minutes.
    cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
    if ! "$py" -m pip install -q --no-deps --index-url "$cpu_index" --timeout 10 --retries 1 torch==2.13.0; then
      echo "setup: no torch from $cpu_index; trying pip's own index (on Linux that is the multi-GB CUDA build)" >&2
      "$py" -m pip install -q torch==2.13.0
    fi
  fi
fi
"$py" -m pip install -q -e ".[$extras]"
if ! why=$(installed_ok "$extras" 2>&1); then
  echo "setup: pip finished, but $why" >&2
  exit 1
fi
printf 'fingerprint %s\nextras %s\n' "$fingerprint" "$extras" >"$stamp"
echo "setup: .venv ready (extras $extras)"
