#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) so Dawn finds a WebGPU adapter on a
# machine without a GPU. Dawn accepts lavapipe only from Mesa 23 on, which Debian 12 ships
# in bookworm-backports. Idempotent: does nothing when a Mesa >= 23 lavapipe is present.
set -euo pipefail

icd_present() {
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || return 1
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || echo 0)
  dpkg --compare-versions "$v" ge 23 || return 1
}

if icd_present; then
  echo "install-vulkan: lavapipe (Mesa >= 23) already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$list" >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libvulkan1 >/dev/null
else
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
icd_present || { echo "install-vulkan: lavapipe still missing after install" >&2; exit 1; }
echo "install-vulkan: installed $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
