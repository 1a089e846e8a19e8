#!/usr/bin/env bash
# The whole test suite, as CI runs it. Needs a Rust toolchain (stable, with
# rustfmt and clippy) and a Debian machine: scripts/install-test-deps.sh
# installs Chromium, Node.js and the web client's npm packages for the
# browser test. Rust code builds from crates.io alone (protobuf schemas are
# compiled by protox, in pure Rust: no protoc needed). Everything is built
# with the FoundationDB store (cargo feature fdb), whose tests run on a
# throw-away fdbserver: the install script installs FoundationDB too.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies"
./scripts/install-test-deps.sh

# FoundationDB's client library: the library path, $FDB_DIST, or
# /opt/foundationdb. The foundationdb crate links against it (and reads
# FDB_CLIENT_LIB_PATH only on its first build); quipd and the test binaries
# find it again at run time through an rpath (server/build.rs).
if [ -z "${FDB_CLIENT_LIB_PATH:-}" ]; then
  if ldconfig -p 2>/dev/null | grep -q 'libfdb_c\.so '; then
    :
  elif [ -f "${FDB_DIST:-/nonexistent}/lib/libfdb_c.so" ]; then
    export FDB_CLIENT_LIB_PATH="$FDB_DIST/lib"
  elif [ -f /opt/foundationdb/lib/libfdb_c.so ]; then
    export FDB_CLIENT_LIB_PATH=/opt/foundationdb/lib
  else
    echo "!! FoundationDB is not installed: the fdb feature cannot build, so no FoundationDB test would run; run scripts/install-test-deps.sh" >&2
    exit 1
  fi
fi
# Every binary that links quip-server with the feature (the client's tests
# do, through a dev-dependency) finds the library at run time; the rpath of
# build/fdb_rpath.rs covers only the crates that have an fdb feature.
FDB_LIB_DIR="${FDB_CLIENT_LIB_PATH:-/opt/foundationdb/lib}"
export LD_LIBRARY_PATH="$FDB_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# quip-server's FoundationDB store, the integration tests that run on it,
# and the benchmark's cluster scenario.
FDB_FEATURES=(--features quip-server/fdb,quip-tests/fdb,quip-bench/fdb)

fdb_bin() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [ -x "${FDB_DIST:-/nonexistent}/bin/$1" ]; then
    echo "$FDB_DIST/bin/$1"
  else
    echo "/opt/foundationdb/bin/$1"
  fi
}
# One throw-away single-process fdbserver for the whole run: a free loopback
# port, a temporary directory, `configure new single memory`; stopped by pid
# on exit. The tests find it through QUIP_TEST_FDB_CLUSTER_FILE (without it,
# each test process would start its own: quip_server::testing).
start_test_fdb() {
  fdb_dir="$(mktemp -d -t quip-fdb.XXXXXX)"
  mkdir -p "$fdb_dir/data"
  trap 'kill "${fdb_pid:-}" 2>/dev/null; rm -rf "$fdb_dir"' EXIT
  local port try
  for try in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi # taken
    echo "test:quip$RANDOM@127.0.0.1:$port" >"$fdb_dir/fdb.cluster"
    "$(fdb_bin fdbserver)" -p "127.0.0.1:$port" -C "$fdb_dir/fdb.cluster" \
      -d "$fdb_dir/data" -L "$fdb_dir" >/dev/null 2>&1 &
    fdb_pid=$!
    if "$(fdb_bin fdbcli)" -C "$fdb_dir/fdb.cluster" --exec 'configure new single memory' --timeout 30 >/dev/null 2>&1 &&
      "$(fdb_bin fdbcli)" -C "$fdb_dir/fdb.cluster" --exec 'status minimal' --timeout 30 | grep -q 'The database is available'; then
      export QUIP_TEST_FDB_CLUSTER_FILE="$fdb_dir/fdb.cluster"
      echo "test fdbserver: pid $fdb_pid, 127.0.0.1:$port"
      return 0
    fi
    kill "$fdb_pid" 2>/dev/null || true
  done
  echo "!! could not start a test fdbserver (logs in $fdb_dir): the FoundationDB tests cannot run" >&2
  return 1
}

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
# The web client's sans-IO parts (node's own test runner).
node --test web/src/*.test.mjs
echo "== clippy"
cargo clippy --workspace --all-targets --locked "${FDB_FEATURES[@]}" -- -D warnings
# The default build (no FoundationDB) must stay clean too.
cargo clippy -p quip-server --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
echo "== benchmark smoke (tiny sizes; figures are not checked)"
start_test_fdb
cargo build --locked -p quip-bench -p quip-server --features quip-server/fdb,quip-bench/fdb
./target/debug/quip-bench disk --seconds 1
./target/debug/quip-bench throughput --users 20 --messages 20
./target/debug/quip-bench latency --users 10 --rate 100 --seconds 1
./target/debug/quip-bench sync --messages 200
./target/debug/quip-bench fanout --members 8 --rate 20 --seconds 1
./target/debug/quip-bench cluster --fdb-cluster-file "$QUIP_TEST_FDB_CLUSTER_FILE" --messages 20
cargo test --locked -p quip-bench --benches --features quip-server/fdb,quip-bench/fdb   # each Criterion micro-benchmark once
./target/debug/quip-bench connections --connections 50 --users 2 --idle-seconds 1
echo "== tests"
# The integration suite twice: first with every test server's data in
# FoundationDB (QUIP_TEST_STORE=fdb: a one-node cluster, so every push
# goes through the node's inbox), then as is, on the embedded store, with
# the rest of the workspace. The cluster and FoundationDB-specific binaries
# choose their stores themselves and run once.
if command -v cargo-nextest >/dev/null 2>&1; then
  echo "== integration tests on FoundationDB"
  QUIP_TEST_STORE=fdb cargo nextest run -p quip-tests --locked --no-fail-fast --features quip-tests/fdb \
    -E 'not binary(cluster) and not binary(fdb)'
  # And on a three-node cluster, each new connection on the next node. One
  # test asserts a limit that spec/protocol.md §21.4 keeps per node (a
  # device's request rate, shared by its connections on one node): spread
  # over three nodes it is larger, as the spec says.
  echo "== integration tests on a three-node cluster"
  QUIP_TEST_STORE=fdb3 cargo nextest run -p quip-tests --locked --no-fail-fast --features quip-tests/fdb \
    -E 'not binary(cluster) and not binary(fdb) and not test(floods_are_rate_limited_per_device_across_its_connections)'
  echo "== all tests"
  # nextest does not run doctests; run them first so the summary closes the log.
  cargo test --workspace --locked --doc "${FDB_FEATURES[@]}"
  cargo nextest run --workspace --locked --no-fail-fast "${FDB_FEATURES[@]}"
else
  QUIP_TEST_STORE=fdb cargo test -p quip-tests --locked --no-fail-fast --features quip-tests/fdb
  cargo test --workspace --locked --no-fail-fast "${FDB_FEATURES[@]}"
fi
