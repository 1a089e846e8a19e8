#!/usr/bin/env bash
# Runs every fuzz target briefly (default 20 s each) so the targets never rot
# and shallow bugs are caught in CI. Long campaigns: see fuzz/README.md.
# Installs cargo-fuzz if missing; works on a stable toolchain through
# RUSTC_BOOTSTRAP (cargo-fuzz needs -Z flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in $(cargo fuzz list); do
  # Fuzz from a scratch copy of the seed corpus: CI never writes into the repo.
  scratch="$(mktemp -d)"
  cp -r "corpus/$target/." "$scratch/" 2>/dev/null || true
  echo "== fuzz $target for ${seconds}s"
  log="$scratch.log"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$scratch" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed; the crashing input is under fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
  rm -rf "$scratch" "$log"
done
