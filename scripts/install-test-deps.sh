#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, on a fresh Debian
# machine: Debian's Chromium (the web client's browser test drives it; test
# tools' own browser downloads are not used), Node.js with the web/ npm
# packages at their locked versions (esbuild, protobufjs, playwright-core),
# promtool from Debian's prometheus package (checks the /metrics format),
# s3s-fs from crates.io, a real S3-protocol server the media tests run
# on loopback, and for the FoundationDB store (cargo feature fdb) Debian's
# libclang-dev (the foundationdb crate's bindgen) and FoundationDB itself
# (fdbserver, fdbcli, libfdb_c.so), which no registry these machines reach
# carries: the prebuilt copy in shared/fdb/ installs into /opt/foundationdb
# in seconds (QUIP_FDB_BUILD names its build.sh elsewhere).
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
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "installing libclang-dev (Debian package; the foundationdb crate's bindgen)"
  apt_install libclang-dev
fi
# FoundationDB: found on the library path, under $FDB_DIST or in
# /opt/foundationdb (the order scripts/test.sh and the build scripts use).
if ! ldconfig -p 2>/dev/null | grep -q 'libfdb_c\.so ' &&
  [ ! -f "${FDB_DIST:-/nonexistent}/lib/libfdb_c.so" ] &&
  [ ! -f /opt/foundationdb/lib/libfdb_c.so ]; then
  fdb_build="${QUIP_FDB_BUILD:-$PWD/../shared/fdb/build.sh}"
  [ -f "$fdb_build" ] || fdb_build=/work/shared/fdb/build.sh
  if [ ! -f "$fdb_build" ]; then
    echo "FoundationDB is not installed and no shared/fdb/build.sh was found (set QUIP_FDB_BUILD)" >&2
    exit 1
  fi
  echo "installing FoundationDB into /opt/foundationdb ($fdb_build)"
  sudo_ bash "$fdb_build"
fi
# promtool (Debian's prometheus package) checks quipd's /metrics format
# (tests/tests/operations.rs); only the tool is needed, not the exporters
# the package recommends.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus (Debian package; for promtool)"
  apt_install --no-install-recommends prometheus
fi
if ! (cd web && npm ls --silent >/dev/null 2>&1); then
  echo "installing web/ npm packages (npm ci)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
