#!/usr/bin/env bash
# Sets up a checkout for development and tests: installs npm dependencies (npm ci also builds
# dist/ through the `prepare` script), then checks that WebGPU finds an adapter. Only when it
# does not, installs Mesa's software Vulkan driver (lavapipe) with scripts/install-vulkan.sh
# and checks again. Needs no GPU. Safe to run again at any time.
#
# Unless /usr/bin/python3 already imports torch, it installs Debian's python3-torch and
# OpenBLAS (libopenblas0-pthread: without it Debian's torch falls back to a reference BLAS
# 100x slower) with apt, as root or through sudo: test/export/torch-*.test.ts run the modules
# `moec export --format torch` writes. `--no-torch` (or MOEC_SETUP_TORCH=0) skips that; without
# root or sudo, or when apt cannot install them, setup goes on with a warning and those tests
# skip, saying why. `--bench` (or MOEC_SETUP_BENCH=1) makes torch required (`npm run bench`'s
# PyTorch peer needs it): setup fails when it cannot be installed.
#
# When /usr/bin/chromium is missing it also installs Debian's `chromium` (apt, as root or
# through sudo): test/view/browser.test.ts opens `moec view`'s pages in it headless through
# playwright-core (no Playwright browser download). `--no-browser` (or MOEC_SETUP_BROWSER=0)
# skips that; without root or sudo, or when apt cannot install it, setup goes on with a
# warning and that test skips, saying why.
set -euo pipefail

bench="${MOEC_SETUP_BENCH:-0}"
browser="${MOEC_SETUP_BROWSER:-1}"
torch="${MOEC_SETUP_TORCH:-1}"
for arg in "$@"; do
  case "$arg" in
  --bench) bench=1 ;;
  --no-browser) browser=0 ;;
  --no-torch) torch=0 ;;
  *)
    printf 'setup: unknown option %s (usage: scripts/setup.sh [--bench] [--no-browser] [--no-torch])\n' "$arg" >&2
    exit 2
    ;;
  esac
done

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

# The PyTorch export tests and the training bench's PyTorch peer (bench/peers/torch_train.py)
# run on /usr/bin/python3. Required with --bench; otherwise a warning when it cannot be had.
if [ "$bench" = 1 ] || [ "$torch" = 1 ]; then
  if /usr/bin/python3 -c "import torch" >/dev/null 2>&1; then
    step "torch: $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') already installed"
  else
    if [ "$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi
    if [ "$SUDO" = none ]; then
      [ "$bench" = 1 ] && fail "--bench needs root or sudo to apt-get install python3-torch libopenblas0-pthread"
      step "torch: not root without sudo: the PyTorch export tests will skip (apt-get install python3-torch libopenblas0-pthread as root to run them)"
    else
      step "torch: installing python3-torch and OpenBLAS (apt) ..."
      if { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-torch libopenblas0-pthread; } \
        >>"$log" 2>&1 && /usr/bin/python3 -c "import torch" >>"$log" 2>&1; then
        step "torch: $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') installed"
      else
        [ "$bench" = 1 ] && fail "apt-get install python3-torch libopenblas0-pthread failed (or import torch fails)"
        tail -n 5 "$log" >&2
        step "torch: WARNING: apt-get install python3-torch failed (see above); test/export/torch-*.test.ts will skip"
      fi
    fi
  fi
  : >"$log"
fi

# The browser test of `moec view` (test/view/browser.test.ts) drives Debian's Chromium.
if [ "$browser" = 1 ]; then
  if [ -x /usr/bin/chromium ]; then
    step "browser: $(/usr/bin/chromium --version 2>/dev/null | head -n 1) already installed"
  else
    if [ "$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi
    if [ "$SUDO" = none ]; then
      step "browser: no /usr/bin/chromium and not root without sudo: the browser test will skip (apt-get install chromium as root to run it)"
    else
      step "browser: installing Debian's chromium (apt) for the view tests ..."
      # A machine that cannot install it (no package mirror) still gets set up: the browser
      # test then skips, saying why; everything else runs.
      if { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >>"$log" 2>&1 &&
        [ -x /usr/bin/chromium ]; then
        step "browser: $(/usr/bin/chromium --version 2>/dev/null | head -n 1) installed"
      else
        tail -n 5 "$log" >&2
        step "browser: WARNING: apt-get install chromium failed (see above); test/view/browser.test.ts will skip"
      fi
    fi
  fi
  : >"$log"
fi

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
