#!/bin/sh
# console-build.sh OUTDIR GENERATED_C: builds the web console (console/:
# TypeScript + Vite) into OUTDIR and embeds it into GENERATED_C for the tide
# binary (scripts/embed-assets.lua).  make runs it when console/ changed.
# The npm packages come from console/package-lock.json (npm ci), installed
# again only when the lock is newer than them.  Builds running side by
# side (the plain and the sanitizer builds) take turns on console/.
set -eu
cd "$(dirname "$0")/.."
out=$1
gen=$2
mkdir -p "$(dirname "$gen")"
exec 9>console/.build-lock
flock 9
if [ ! -f console/node_modules/.package-lock.json ] ||
    [ console/package-lock.json -nt console/node_modules/.package-lock.json ]; then
    (cd console && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
fi
(cd console && ./node_modules/.bin/tsc --noEmit -p . &&
    TIDE_CONSOLE_OUT="$(cd .. && mkdir -p "$out" && cd "$out" && pwd)" ./node_modules/.bin/vite build --logLevel warn)
lua5.4 scripts/embed-assets.lua "$out" "$gen"
