#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, on a fresh Debian
# machine: Debian's Chromium (the web client's browser test drives it; test
# tools' own browser downloads are not used), Node.js with the web/ npm
# packages at their locked versions (esbuild, protobufjs, playwright-core),
# and s3s-fs from crates.io, a real S3-protocol server the media tests run
# on loopback.
# Idempotent: does nothing when all of it is present.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  # Try with the current package lists first; refresh them if that fails.
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { sudo_ apt-get update -qq && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "installing chromium (Debian package)"
  apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm (Debian packages)"
  apt_install nodejs npm
fi
S3S_FS_VERSION=0.14.1 # the newest that builds with rustc 1.95
if ! "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  echo "installing s3s-fs $S3S_FS_VERSION (cargo install; a few minutes)"
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --quiet
fi
if ! (cd web && npm ls --silent >/dev/null 2>&1); then
  echo "installing web/ npm packages (npm ci)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
