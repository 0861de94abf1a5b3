#!/usr/bin/env bash
# Installs the Python packages tests drive flotilla with (the official
# `openai` client) into target/test-py (pip --target, never the system's
# site-packages). Idempotent. Prints the folder to put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="target/test-py"
pkg="openai==1.109.1"
python="${PYTHON:-python3}"

if ! PYTHONPATH="$dir" "$python" -c 'import openai, sys; sys.exit(0 if openai.__version__ == "1.109.1" else 1)' 2>/dev/null; then
  echo "==> pip install $pkg into $dir" >&2
  "$python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --upgrade --target "$dir" "$pkg" >&2
fi
echo "$(pwd)/$dir"
