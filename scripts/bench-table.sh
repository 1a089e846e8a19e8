#!/usr/bin/env bash
# Runs every quip-bench scenario at its default size (release build, server
# and load generator on this machine) and regenerates the results table in
# benches/README.md from their --json output (kept whole in
# benches/results.jsonl). Takes a few minutes; run it on
# a quiet machine. With --tiny, runs tiny sizes and prints the table instead
# (a smoke test of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=false
[ "${1:-}" = "--tiny" ] && tiny=true
if $tiny; then
  profile=debug
  cargo build --locked -p quip-bench -p quip-server
else
  profile=release
  cargo build --locked --release -p quip-bench -p quip-server
  # The build leaves hundreds of MB dirty; written back during the first
  # scenarios, they stall the store's fdatasyncs (seen with strace).
  sync
fi
bench="./target/$profile/quip-bench"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
run() { echo "== quip-bench $*" >&2; "$bench" --json "$@" | tail -n 1 >>"$results"; }
if $tiny; then
  run disk --seconds 1
  run throughput --users 20 --messages 20
  run latency --users 10 --rate 100 --seconds 1
  run fanout --members 8 --rate 20 --seconds 1
  run sync --messages 200
  run connections --connections 50 --users 2 --idle-seconds 1
  "$bench" table --stdout <"$results"
else
  run disk
  run throughput
  run latency
  run fanout
  run sync
  run connections
  run connections --connections 100000 --users 100
  "$bench" table --readme benches/README.md <"$results"
  # The raw results behind the table (every figure, failure reasons).
  cp "$results" benches/results.jsonl
  echo "benches/README.md and benches/results.jsonl updated" >&2
fi
