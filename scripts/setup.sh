#!/usr/bin/env bash
# Sets up a checkout for development and tests: installs npm dependencies (npm ci also builds
# dist/ through the `prepare` script), then checks that WebGPU finds an adapter. Only when it
# does not, installs Mesa's software Vulkan driver (lavapipe) with scripts/install-vulkan.sh
# and checks again. Needs no GPU. Safe to run again at any time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
log="${TMPDIR:-/tmp}/moec-setup.$$.log"
trap 'rm -f "$log"' EXIT

step() { printf 'setup: %s\n' "$*"; }
fail() {
  printf 'setup: FAILED: %s\n' "$*" >&2
  if [ -s "$log" ]; then
    printf -- '--- last lines of output ---\n' >&2
    tail -n 40 "$log" >&2
  fi
  exit 1
}

# Dawn / Mesa want a private runtime dir; a bare container or CI shell often has none.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="/tmp/xdg-runtime-$(id -u)"
  mkdir -p "$XDG_RUNTIME_DIR"
  chmod 700 "$XDG_RUNTIME_DIR"
fi

command -v node >/dev/null 2>&1 || fail "node not found: install Node.js >= 20"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js >= 20 required, found $(node --version)"

step "npm ci (node $(node --version), npm $(npm --version)) ..."
start=$SECONDS
npm ci --no-audit --no-fund --loglevel=error >"$log" 2>&1 ||
  fail "npm ci (dependencies or build via prepare) failed"
step "dependencies installed and dist/ built in $((SECONDS - start))s"
: >"$log" # from here on the log holds only what the probe and the driver install print

probe() {
  node dist/runtime/probe-adapter.js 2>>"$log"
}

if adapter=$(probe); then
  step "WebGPU adapter: $adapter"
  exit 0
fi

step "no WebGPU adapter; installing Mesa's software Vulkan driver (lavapipe) ..."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/install-vulkan.sh >>"$log" 2>&1 || fail "scripts/install-vulkan.sh failed"
elif command -v sudo >/dev/null 2>&1; then
  sudo bash scripts/install-vulkan.sh >>"$log" 2>&1 || fail "sudo scripts/install-vulkan.sh failed"
else
  fail "no WebGPU adapter and not root without sudo: run scripts/install-vulkan.sh as root"
fi
installed=$(grep '^install-vulkan:' "$log" | tail -n 1) || installed="install-vulkan: done"
step "${installed:-install-vulkan: done}"

if adapter=$(probe); then
  step "WebGPU adapter: $adapter"
else
  fail "still no WebGPU adapter after installing lavapipe (see node dist/runtime/probe-adapter.js)"
fi
