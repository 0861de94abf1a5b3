#!/usr/bin/env bash
# Benchmark (j): the embedded model server against llama-cpp-python's
# OpenAI-compatible server (a peer on the same engine, llama.cpp), side by
# side in one run, on the same GGUF file, threads and context.
#
# Installs llama-cpp-python[server] into target/bench-venv (it compiles
# llama.cpp: tens of minutes on 2 cores the first time; CMAKE_ARGS as ours,
# GGML_NATIVE=OFF). Prints a markdown table and writes target/bench-local.json.
#
#   scripts/bench-local.sh [ROUNDS]      (default 5 rounds per server)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-5}"
gguf=$(scripts/test-models.sh)
venv="target/bench-venv"
peer_version="0.3.16"
threads=$(nproc)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$peer_version' else 1)" 2>/dev/null; then
  echo "==> building llama-cpp-python $peer_version (compiles llama.cpp)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF" "$venv/bin/pip" install --quiet \
    "llama-cpp-python[server]==$peer_version" >&2
fi

echo "==> building flotilla (release)" >&2
cargo build --release -q -p flotilla-cli

work=$(mktemp -d /tmp/flotilla-bench-local.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

FLOTILLA_HOME="$work/home" target/release/flotilla model serve --model "$gguf" \
  --listen 127.0.0.1:0 --ctx 2048 --parallel 1 --threads "$threads" >"$work/flotilla.out" 2>"$work/flotilla.err" &
pids+=($!)
port=18765
"$venv/bin/python" -m llama_cpp.server --model "$gguf" --host 127.0.0.1 --port "$port" \
  --n_ctx 2048 --n_threads "$threads" --n_threads_batch "$threads" --n_batch 512 \
  >"$work/peer.out" 2>&1 &
pids+=($!)

for _ in $(seq 600); do
  grep -q '^listening ' "$work/flotilla.out" 2>/dev/null && curl -sf "127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
  sleep 0.5
done
ours="http://$(sed -n 's/^listening //p' "$work/flotilla.out")/v1"
peer="http://127.0.0.1:$port/v1"

"$venv/bin/python" crates/flotilla-bench/local/bench.py "$ours" "$peer" "$rounds" | tee target/bench-local.json >&2
"$venv/bin/python" - target/bench-local.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("| server | prompt tokens/s (p50) | decode tokens/s (p50) | prompt ratio | decode ratio |")
print("|---|---|---|---|---|")
base = r["llama-cpp-python"]
for name in ("llama-cpp-python", "flotilla"):
    s = r[name]
    print(f"| {name} | {s['pp_p50']:.0f} | {s['tg_p50']:.1f} | {s['pp_p50']/base['pp_p50']:.2f} | {s['tg_p50']/base['tg_p50']:.2f} |")
print(f"\n{r['rounds']} rounds each, alternating; prompt {r['prompt_tokens']} tokens, {r['max_tokens']} generated, greedy; {r['cpu']}")
PY
