#!/usr/bin/env bash
# Builds the web client: web/src -> web/dist (embedded in quipd at compile
# time), with the protobuf code generated from protocol/proto by pbjs.
# Reproducible: exact versions from package-lock.json (npm ci), one
# esbuild bundle with no timestamps or absolute paths in it.
#
#   ./build.sh           rebuild web/dist
#   ./build.sh --check   rebuild into a temporary directory and fail if it
#                        differs from the committed web/dist (CI runs this)
set -euo pipefail
cd "$(dirname "$0")"
if ! npm ls --silent >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
fi
out=dist
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out" gen
./node_modules/.bin/pbjs -t static-module -w es6 --es6 --keep-case --no-service \
  --no-delimited --no-verify --no-typeurl --no-comments \
  -o gen/quip.js ../protocol/proto/quip/v1/quip.proto
./node_modules/.bin/esbuild src/app.js --alias:@protobufjs/inquire=./src/inquire.cjs --bundle --minify --format=esm \
  --target=chrome110,firefox115,safari16 --legal-comments=eof \
  --log-level=warning --outfile="$out/app.js"
cp src/index.html src/app.css "$out/"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$out" dist >/dev/null; then
    echo "web/dist is stale: run web/build.sh and commit the result" >&2
    diff -r "$out" dist | head -20 >&2
    exit 1
  fi
  echo "web/dist matches web/src"
fi
