#!/usr/bin/env bash
# The whole test suite, as CI runs it. Needs a Rust toolchain (stable, with
# rustfmt and clippy) and a Debian machine: scripts/install-test-deps.sh
# installs Chromium, Node.js and the web client's npm packages for the
# browser test. Rust code builds from crates.io alone (protobuf schemas are
# compiled by protox, in pure Rust: no protoc needed).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies"
./scripts/install-test-deps.sh

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

echo "== format"
cargo fmt --all -- --check
# fuzz/ is a workspace of its own (nightly-only flags): checked separately.
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
echo "== web client (web/dist must be what web/src builds to)"
./web/build.sh --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
echo "== benchmark smoke (tiny sizes; figures are not checked)"
cargo build --locked -p quip-bench -p quip-server
./target/debug/quip-bench disk --seconds 1
./target/debug/quip-bench throughput --users 20 --messages 20
./target/debug/quip-bench latency --users 10 --rate 100 --seconds 1
./target/debug/quip-bench sync --messages 200
./target/debug/quip-bench fanout --members 8 --rate 20 --seconds 1
cargo test --locked -p quip-bench --benches   # each Criterion micro-benchmark once
./target/debug/quip-bench connections --connections 50 --users 2 --idle-seconds 1
echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so the summary closes the log.
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
