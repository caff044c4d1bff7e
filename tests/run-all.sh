#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs the real parts the
# tests use (registry, skopeo, umoci, runc, busybox, compressors), then runs
# cargo test. README.md documents this command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(skopeo umoci runc docker-registry busybox-static pigz zstd uidmap buildah openssl python3 util-linux tar gzip xz-utils bzip2 git bsdutils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

cargo test --all-targets -- --test-threads=2 "$@"
