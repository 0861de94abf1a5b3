#!/usr/bin/env bash
# Builds flotilla and runs its main job end to end: a daemon, a durable agent
# session that reads, edits and runs code in a workspace, and its event log.
#
# With OPENAI_BASE_URL (and OPENAI_API_KEY if the server needs one) and
# FLOTILLA_DEMO_MODEL=openai:MODEL set, the session uses that real model.
# Otherwise it uses the scripted model server from flotilla-testkit, so the
# demo works offline on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# llama.cpp (the embedded model) builds with cmake, a C++ compiler and libclang.
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null || need_apt+=(libclang-dev)
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
  echo "==> no FLOTILLA_DEMO_MODEL: starting the scripted model server (examples/demo-model.json)"
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
