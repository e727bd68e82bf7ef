#!/bin/bash
# Longer runs than the default suite (make soak): the reload-under-load
# exactly-once test with many more events and reloads, the stream crash
# test (kill -9 under acknowledged load) with many more rounds, and both
# fuzzers.
#   SOAK_EVENTS (default 100000), SOAK_CRASH_ROUNDS (default 200),
#   SOAK_FUZZ_SECONDS (default 300 each)
set -eu
cd "$(dirname "$0")/.."
make -s all
echo "== reload under load: ${SOAK_EVENTS:-100000} events, a reload every 200"
TIDE_SOAK_EVENTS=${SOAK_EVENTS:-100000} TIDE_ROOT=$(pwd) \
    lua5.4 /usr/bin/busted --lpath='tests/?.lua' --cpath='build/?.so' --filter='exactly once' tests/reload_spec.lua
echo "== streams: ${SOAK_CRASH_ROUNDS:-200} rounds of kill -9 under acknowledged load"
TIDE_CRASH_ROUNDS=${SOAK_CRASH_ROUNDS:-200} TIDE_ROOT=$(pwd) lua5.4 /usr/bin/busted --lpath='tests/?.lua' --cpath='build/?.so' --filter='once and in order' tests/store_recovery_spec.lua
echo "== fuzzing the protocol parser for ${SOAK_FUZZ_SECONDS:-300}s"
scripts/fuzz.sh run "${SOAK_FUZZ_SECONDS:-300}" 2>&1 | tail -3
echo "== fuzzing the JSON layer for ${SOAK_FUZZ_SECONDS:-300}s"
scripts/fuzz.sh run-json "${SOAK_FUZZ_SECONDS:-300}" 2>&1 | tail -3
