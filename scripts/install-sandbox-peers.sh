#!/usr/bin/env bash
# Installs the sandboxes that `flotilla-bench` compares flotilla's session
# sandbox with: bubblewrap (Debian's `bwrap`), Anthropic's `srt`
# (@anthropic-ai/sandbox-runtime) and OpenAI's `codex sandbox` (@openai/codex).
#
# Idempotent: apt packages are installed only when missing, npm packages only
# when missing or at another version, and only into target/sandbox-peers
# (gitignored). Also writes what the benchmark runs them with: an srt settings
# file (no network, no writes), a private TMPDIR for srt and a CODEX_HOME.
# The benchmark runs this; the test suite does not.
#
# Versions are pinned to the ones the benchmark was written against; override
# with SRT_VERSION=... / CODEX_VERSION=... (e.g. "latest").
set -euo pipefail
cd "$(dirname "$0")/.."

SRT_VERSION="${SRT_VERSION:-0.0.78}"
CODEX_VERSION="${CODEX_VERSION:-0.169.0}"
dir=target/sandbox-peers

# --- Debian packages: bwrap for all three, socat and ripgrep for srt, npm.
need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v socat >/dev/null || need_apt+=(socat)
command -v rg >/dev/null || need_apt+=(ripgrep)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt)"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q "${need_apt[@]}" >/dev/null
  fi
fi

# srt 0.0.x declares node >= 20.11 (Debian 12's own nodejs is 18).
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  echo "warning: node $(node --version 2>/dev/null || echo missing) is older than srt needs (>= 20.11)" >&2
fi

# --- npm packages, project-local.
have() { # npm package, wanted version -> true if installed under $dir at that version
  local pj="$dir/node_modules/$1/package.json" v
  [ -f "$pj" ] || return 1
  [ "$2" = latest ] && return 0
  v="$(node -p "require('./$pj').version" 2>/dev/null)" || return 1
  [ "$v" = "$2" ]
}
want=()
have @anthropic-ai/sandbox-runtime "$SRT_VERSION" && [ -x "$dir/node_modules/.bin/srt" ] ||
  want+=("@anthropic-ai/sandbox-runtime@$SRT_VERSION")
have @openai/codex "$CODEX_VERSION" && [ -x "$dir/node_modules/.bin/codex" ] ||
  want+=("@openai/codex@$CODEX_VERSION")
if [ ${#want[@]} -gt 0 ]; then
  echo "==> installing ${want[*]} into $dir (npm)"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "${want[@]}" >/dev/null
fi

# --- What the benchmark runs them with (crates/flotilla-bench/src/peers.rs).
mkdir -p "$dir/tmp" "$dir/codex-home"
settings="$dir/srt-settings.json"
if [ ! -s "$settings" ]; then
  cat >"$settings" <<'JSON'
{
  "network": { "allowedDomains": [], "deniedDomains": [] },
  "filesystem": { "denyRead": [], "allowRead": [], "allowWrite": [], "denyWrite": [] }
}
JSON
fi

# The codex npm package is a node launcher around a native binary; the
# benchmark runs the native one when it is there.
native_codex=""
for f in "$dir"/node_modules/@openai/codex-linux-*/vendor/*/bin/codex; do
  if [ -x "$f" ]; then native_codex="$f"; break; fi
done

echo "bwrap: $(command -v bwrap) ($(bwrap --version 2>/dev/null))"
echo "srt:   $dir/node_modules/.bin/srt ($("$dir/node_modules/.bin/srt" --version 2>/dev/null || echo '?'))"
echo "codex: ${native_codex:-$dir/node_modules/.bin/codex} ($("$dir/node_modules/.bin/codex" --version 2>/dev/null || echo '?'))"
