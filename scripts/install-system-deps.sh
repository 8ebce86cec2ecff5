#!/usr/bin/env bash
# Debian packages Warren needs beyond Python: QEMU and image tools for the host daemon, Chromium
# for the browser tests. Idempotent: installs only what is missing.
set -euo pipefail
# shellcheck: the image tests lint the guest scripts. socat: the daemon's bridge-mode test relays the
# broker into its private network namespace. curl, jq: the API guide's commands (docs/api.md) are run
# by its test.
pkgs=(qemu-system-x86 qemu-utils debootstrap busybox-static e2fsprogs zstd iproute2 cpio chromium chromium-driver shellcheck socat curl jq)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
