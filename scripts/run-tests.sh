#!/bin/bash
# Runs tide's whole test suite: every busted spec in tests/ against the plain
# build, then again against a build with AddressSanitizer + UBSan, plus the
# replay of the fuzz corpus.  Ends with the line "N passed, N failed".
#
#   scripts/run-tests.sh               plain + sanitizer passes (make test)
#   scripts/run-tests.sh --plain-only  plain pass only (make check)
#   scripts/run-tests.sh --asan-only   sanitizer pass only (make asan)
#   SPECS="tests/protocol_spec.lua" scripts/run-tests.sh   a subset
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

mode=${1:-all}
JOBS=$(nproc 2>/dev/null || echo 2)
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
SPECS=${SPECS:-$(ls tests/*_spec.lua)}
LOGDIR="$ROOT/build/test-logs"
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/tide-test-*.log

passed=0
failed=0
skipped=0

build() {
    echo "== building ($1)"
    if [ "$1" = plain ]; then
        make -s -j"$JOBS" all build/interop_c >"$LOGDIR/build-plain.log" 2>&1
    else
        make -s -j"$JOBS" BUILD=build-asan OPT="-O1 -g" SAN="$SAN_FLAGS" build-asan/tide \
            >"$LOGDIR/build-asan.log" 2>&1
    fi || { cat "$LOGDIR/build-$1.log"; echo "build ($1) failed"; return 1; }
    if grep -q 'warning:' "$LOGDIR/build-$1.log"; then
        grep 'warning:' "$LOGDIR/build-$1.log"
        echo "build ($1) has warnings"
        return 1
    fi
}

# run_pass NAME TIDE_BIN: runs every spec, adds its TAP counts to the totals.
run_pass() {
    local name=$1 bin=$2 out="$LOGDIR/$1.tap"
    echo "== suite ($name): $bin"
    : >"$out"
    for spec in $SPECS; do
        TIDE_ROOT="$ROOT" TIDE_BIN="$bin" TIDE_TEST_TMP="$LOGDIR" TIDE_PASS="$name" \
            timeout 600 lua5.4 /usr/bin/busted --lpath="$ROOT/tests/?.lua" --cpath="$ROOT/build/?.so" \
            -o TAP "$spec" >"$out.part" 2>&1
        local rc=$?
        cat "$out.part" >>"$out"
        local p f k
        p=$(grep '^ok ' "$out.part" | grep -vc '# SKIP')
        k=$(grep '^ok ' "$out.part" | grep -c '# SKIP')
        f=$(grep -c '^not ok ' "$out.part")
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            # busted died outside any test (syntax error, timeout): count it.
            f=1
            echo "not ok - $spec: busted exited $rc without a failing test" >>"$out"
        fi
        printf '   %-36s %4d passed, %d failed, %d skipped\n' "$(basename "$spec")" "$p" "$f" "$k"
        if [ "$f" -ne 0 ]; then
            grep -A30 '^not ok ' "$out.part" | head -60 | sed 's/^/     /'
        fi
        passed=$((passed + p))
        failed=$((failed + f))
        skipped=$((skipped + k))
    done
    rm -f "$out.part"
}

ok=1
scripts/install-deps.sh || ok=0

if [ "$mode" != "--asan-only" ]; then
    if build plain; then
        # The layering of src/ (docs/architecture.md), read from the objects.
        if lua5.4 scripts/layer-check.lua build >"$LOGDIR/layer-check.log" 2>&1; then
            passed=$((passed + 1)); echo "   layer check                             ok"
        else
            failed=$((failed + 1)); echo "   layer check FAILED"; sed 's/^/     /' "$LOGDIR/layer-check.log"
        fi
        run_pass plain "$ROOT/build/tide"
        # The fuzz corpus: every stored frame through the parser under ASan+UBSan.
        if scripts/fuzz.sh replay >"$LOGDIR/fuzz-replay.log" 2>&1; then
            passed=$((passed + 1)); echo "   fuzz corpus replay                      ok"
        else
            failed=$((failed + 1)); echo "   fuzz corpus replay FAILED"; tail -30 "$LOGDIR/fuzz-replay.log"
        fi
    else
        failed=$((failed + 1))
    fi
fi

if [ "$mode" != "--plain-only" ]; then
    # The Lua module stays the plain build: lua5.4 itself is not instrumented.
    [ -f build/tide_core.so ] && [ -f build/procmod.so ] || make -s all >/dev/null 2>&1
    if build asan; then
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=99" \
            run_pass asan "$ROOT/build-asan/tide"
        if grep -l -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$LOGDIR"/tide-test-*.log \
            >"$LOGDIR/sanitizer-hits" 2>/dev/null; then
            echo "   sanitizer reports in server logs:"
            sed 's/^/     /' "$LOGDIR/sanitizer-hits"
            failed=$((failed + 1))
        fi
    else
        failed=$((failed + 1))
    fi
fi

[ "$skipped" -eq 0 ] || echo "$skipped skipped (see the lines above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
