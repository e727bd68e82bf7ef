#!/bin/bash
# Runs tide's whole test suite: every busted spec in tests/ against the plain
# build and again against a build with AddressSanitizer + UBSan, plus the
# layer check and the replay of the fuzz corpus.  Ends with the line
# "N passed, N failed".
#
#   scripts/run-tests.sh               plain + sanitizer passes (make test)
#   scripts/run-tests.sh --plain-only  plain pass only (make check)
#   scripts/run-tests.sh --asan-only   sanitizer pass only (make asan)
#   SPECS="tests/protocol_spec.lua" scripts/run-tests.sh   a subset
#   TEST_JOBS=1 scripts/run-tests.sh   one spec file at a time
#
# The suite mostly waits (on sleeps, timeouts and servers), so it runs side
# by side: the two builds at once, then TEST_JOBS busted processes (default
# 8) drawn from one queue holding the specs of both passes, the longest
# first (the times build/test-times kept from the last run, else the list
# below), so that the run does not end on one long spec; the layer check and
# the fuzz replay start with the first specs.  A sanitizer spec waits for
# its build and for the plain one (busted loads the plain Lua modules).
# The specs in ALONE (below: those that time the server's answers) run last,
# with no other spec beside them.
#
# Each busted process gets a directory of its own as TIDE_TEST_TMP
# (build/test-logs/PASS/SPEC: server logs, data, pid files), a range of
# ports of its own for the servers it starts (TIDE_TEST_PORTS, read by
# tests/helpers.lua, which also keeps them off the default HTTP port) and a
# tmux server of its own (TMUX_TMPDIR).  A spec's line is printed when it
# ends, with its failures; its TAP output is in build/test-logs/PASS/SPEC.tap
# and, gathered in spec order, in build/test-logs/PASS.tap.  The sanitizer
# reports are looked for in the logs of every server the run started.
#
# A whole-suite run (no SPECS) waits while another one is going on on the
# machine (a lock in $TMPDIR or /tmp), so that the two do not make each
# other's timed tests fail.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

mode=${1:-all}
JOBS=$(nproc 2>/dev/null || echo 2)
PARALLEL=${TEST_JOBS:-8}
[ "$PARALLEL" -ge 1 ] 2>/dev/null || PARALLEL=1
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
whole=0
[ -n "${SPECS:-}" ] || whole=1
SPECS=${SPECS:-$(ls tests/*_spec.lua)}
LOGDIR="$ROOT/build/test-logs"
TIMES="$ROOT/build/test-times"

# Seconds per spec in a serial run (plain, asan), for the order of a tree
# without build/test-times.  A spec not listed is taken for a long one.
SEED_TIMES="
store_recovery_spec 30 44
streams_spec 34 35
durable_handlers_spec 19 21
checkpoint_spec 16 18
connect_spec 15 24
interop_js_spec 19 19
hostile_spec 11 17
tls_spec 30 35
tls_hostile_spec 12 14
nkey_spec 11 12
http_spec 11 10
examples_durable_spec 4 10
repl_streams_spec 7 8
streams_cli_spec 5 7
interop_spec 6 6
layers_spec 2 5
protocol_spec 3 3
pattern_spec 2 2
repl_spec 2 3
kv_durable_spec 2 3
reload_spec 1 2
run_spec 1 2
sandbox_spec 1 2
dead_letters_spec 1 1
exact_numbers_spec 1 1
fixture_spec 1 1
core_spec 1 1
examples_spec 1 1
clients_spec 0 1
cli_spec 0 1
json_spec 0 0
pipeline_spec 0 0
rule_errors_spec 0 0
"

# One whole suite at a time on a machine (a subset does not wait): two at
# once on two cores stretch each other's waits and push the timed tests past
# their limits.  The lock is fd 9, closed in every child.
if [ "$whole" = 1 ]; then
    exec 9>"${TMPDIR:-/tmp}/tide-suite.lock"
    if ! flock -n 9; then
        echo "== waiting for the whole suite that another run has going on this machine"
        flock 9
    fi
fi

rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"

passed=0
failed=0
skipped=0

# build_start NAME: builds quietly, in the background, into
# build/test-logs/build-NAME.log.
build_start() {
    if [ "$1" = plain ]; then
        # The interop checkers too: the specs of both passes would otherwise
        # build them at the same moment.
        make -s -j"$JOBS" all build/interop_c build/interop_js_c >"$LOGDIR/build-plain.log" 2>&1 9>&- &
    else
        make -s -j"$JOBS" BUILD=build-asan OPT="-O1 -g" SAN="$SAN_FLAGS" build-asan/tide \
            >"$LOGDIR/build-asan.log" 2>&1 9>&- &
    fi
    job_what[$!]="build $1"
}

# build_report NAME STATUS: prints a failed build or its warnings; returns
# 0 when the build may be tested.
build_report() {
    if [ "$2" -ne 0 ]; then
        cat "$LOGDIR/build-$1.log"; echo "build ($1) failed"; return 1
    fi
    if grep -q 'warning:' "$LOGDIR/build-$1.log"; then
        grep 'warning:' "$LOGDIR/build-$1.log"
        echo "build ($1) has warnings"
        return 1
    fi
    echo "== built ($1)"
}

# expected PASS SPEC: the seconds SPEC took last time (build/test-times),
# else in the seed list, else 999.
expected() {
    local name t
    name=$(basename "$2" .lua)
    t=$(awk -v p="$1" -v s="$name" '$1 == p && $2 == s { print $3; exit }' "$TIMES" 2>/dev/null)
    [ -n "$t" ] || t=$(echo "$SEED_TIMES" | awk -v p="$1" -v s="$name" \
        '$1 == s { print (p == "plain" ? $2 : $3); exit }')
    echo "${t:-999}"
}

# alone SPEC: true for a spec that times the server's answers under attack
# (or under a burst of TLS handshakes), or that kills and pauses the
# servers of a JetStream cluster and waits for it to recover (beside seven
# other specs' clusters, a node was seen to get no answer from JetStream
# for minutes after a server's pause); it runs at the end, beside no other
# spec (its two passes one after the other), so that the load of the
# others does not count against its limits.
ALONE="hostile_spec tls_hostile_spec subscriptions_spec cluster_handlers_spec"
alone() {
    case " $ALONE " in *" $(basename "$1" .lua) "*) return 0 ;; esac
    return 1
}

# The queue: "PASS SPEC" lines, the longest expected first, those to run
# alone last.
queue=()
queue_fill() {
    local passes=() p s
    [ "$mode" != "--asan-only" ] && passes+=(plain)
    [ "$mode" != "--plain-only" ] && passes+=(asan)
    mapfile -t queue < <(for p in "${passes[@]}"; do
        for s in $SPECS; do
            printf '%d %s %s %s\n' "$(alone "$s" && echo 0 || echo 1)" "$(expected "$p" "$s")" "$p" "$s"
        done
    done | sort -k1,1 -k2,2 -rn | cut -d' ' -f3-)
}

declare -A job_what=() job_start=() job_tmux=() job_slot=()
declare -A ready=() times=() slot_used=()

# Ports for the servers of the specs: 3,000 below the kernel's ephemeral
# range from a place picked at random (another run may be going on), cut
# into one range per running spec (TIDE_TEST_PORTS, read by helpers.lua).
PORT_BASE=$((10000 + RANDOM % 20 * 1000))
PORT_SLICE=$((3000 / PARALLEL))

# spec_start PASS SPEC: starts busted on SPEC in the background; the job's
# pid is timeout's, so its exit status is busted's (124 on a timeout).
spec_start() {
    local pass=$1 spec=$2 name bin dir tmux slot=0 ports
    while [ -n "${slot_used[$slot]:-}" ]; do slot=$((slot + 1)); done
    slot_used[$slot]=1
    ports="$((PORT_BASE + slot * PORT_SLICE))-$((PORT_BASE + (slot + 1) * PORT_SLICE - 1))"
    name=$(basename "$spec" .lua)
    bin="$ROOT/build/tide"
    [ "$pass" = asan ] && bin="$ROOT/build-asan/tide"
    dir="$LOGDIR/$pass/$name"
    mkdir -p "$dir"
    # tmux's socket path must stay short: its own directory under /tmp.
    tmux=$(mktemp -d "${TMPDIR:-/tmp}/tide-tmux.XXXXXX")
    (
        if [ "$pass" = asan ]; then
            export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=99"
            export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=99"
        fi
        export TIDE_ROOT="$ROOT" TIDE_BIN="$bin" TIDE_TEST_TMP="$dir" TIDE_PASS="$pass" \
            TIDE_TEST_PORTS="$ports" TMUX_TMPDIR="$tmux"
        exec 9>&-
        exec timeout 600 lua5.4 /usr/bin/busted --lpath="$ROOT/tests/?.lua" --cpath="$ROOT/build/?.so" \
            -o TAP "$spec" >"$dir.tap" 2>&1
    ) &
    job_what[$!]="spec $pass $spec"
    job_start[$!]=$EPOCHREALTIME
    job_tmux[$!]=$tmux
    job_slot[$!]=$slot
}

# spec_report PID STATUS: prints the spec's line (and its failures), adds
# its counts to the totals.
spec_report() {
    local pid=$1 rc=$2 pass spec name tap p f k secs
    read -r _ pass spec <<<"${job_what[$pid]}"
    name=$(basename "$spec" .lua)
    tap="$LOGDIR/$pass/$name.tap"
    secs=$(awk -v a="${job_start[$pid]}" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    times["$pass $name"]=$secs
    TMUX_TMPDIR="${job_tmux[$pid]}" tmux kill-server 2>/dev/null
    rm -rf "${job_tmux[$pid]}"
    unset "slot_used[${job_slot[$pid]}]"
    p=$(grep '^ok ' "$tap" | grep -vc '# SKIP')
    k=$(grep '^ok ' "$tap" | grep -c '# SKIP')
    f=$(grep -c '^not ok ' "$tap")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        # busted died outside any test (syntax error, timeout): count it.
        f=1
        echo "not ok - $spec: busted exited $rc without a failing test" >>"$tap"
    fi
    printf '   %-5s %-36s %4d passed, %d failed, %d skipped  (%ss)\n' "$pass" "$name.lua" "$p" "$f" "$k" "$secs"
    if [ "$f" -ne 0 ]; then
        grep -A30 '^not ok ' "$tap" | head -60 | sed 's/^/     /'
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + k))
}

# check_start NAME: the layer check or the fuzz corpus replay, in the
# background, into build/test-logs/NAME.log.
check_start() {
    case $1 in
    layer-check) lua5.4 scripts/layer-check.lua build >"$LOGDIR/$1.log" 2>&1 9>&- & ;;
    fuzz-replay) scripts/fuzz.sh replay >"$LOGDIR/$1.log" 2>&1 9>&- & ;;
    esac
    job_what[$!]="check $1"
}

check_report() {
    local label="layer check"
    [ "$1" = fuzz-replay ] && label="fuzz corpus replay"
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1)); printf '   %-42s ok\n' "$label"
    else
        failed=$((failed + 1)); echo "   $label FAILED"; tail -30 "$LOGDIR/$1.log" | sed 's/^/     /'
    fi
}

# build_done NAME STATUS: reports the build and lets its checks and specs
# start.  The sanitizer specs load the plain Lua modules (lua5.4 itself is
# not instrumented), so they also wait for the plain build.
plain_done=0
asan_built=0
build_done() {
    [ "$1" = plain ] && plain_done=1
    if build_report "$1" "$2"; then
        if [ "$1" = plain ]; then
            ready[plain]=1
            # The layering of src/ (docs/architecture.md), read from the
            # objects; the fuzz corpus: every stored frame through the parser
            # under ASan+UBSan.
            check_start layer-check
            check_start fuzz-replay
        else
            asan_built=1
        fi
    else
        failed=$((failed + 1))
    fi
    [ "$asan_built" = 1 ] && { [ "$plain_done" = 1 ] || [ "$mode" = "--asan-only" ]; } && ready[asan]=1
    return 0
}

# Starts queued specs whose build is there, up to PARALLEL at a time; a
# spec to run alone only once nothing else runs (no build, no check, no
# other spec, not its other pass).
pool_fill() {
    local i running=0 others=0 pass spec
    for i in "${job_what[@]}"; do
        [ "${i%% *}" = spec ] && running=$((running + 1))
        [ "${i%% *}" = spec ] && alone "${i##* }" || others=$((others + 1))
    done
    for i in "${!queue[@]}"; do
        [ "$running" -lt "$PARALLEL" ] || return 0
        pass=${queue[$i]%% *}
        spec=${queue[$i]#* }
        [ -n "${ready[$pass]:-}" ] || continue
        if alone "$spec"; then
            [ "$others" -eq 0 ] && [ "$running" -eq 0 ] || return 0
        fi
        spec_start "$pass" "$spec"
        unset "queue[$i]"
        running=$((running + 1))
    done
}

stop_all() {
    local pid
    for pid in "${!job_what[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${!job_tmux[@]}"; do
        TMUX_TMPDIR="${job_tmux[$pid]}" tmux kill-server 2>/dev/null
        rm -rf "${job_tmux[$pid]}"
    done
    exit 130
}
trap stop_all INT TERM

scripts/install-deps.sh

case $mode in
--plain-only) builds=plain ;;
--asan-only) builds=asan ;;
*) builds="plain and asan, side by side" ;;
esac
echo "== building ($builds); then the specs, $PARALLEL at a time"
queue_fill
if [ "$mode" != "--asan-only" ]; then
    build_start plain
else
    # The Lua modules and the interop checkers stay the plain build.
    [ -f build/tide_core.so ] && [ -f build/procmod.so ] || make -s all >/dev/null 2>&1
fi
[ "$mode" != "--plain-only" ] && build_start asan

while [ "${#job_what[@]}" -gt 0 ]; do
    wait -n -p pid
    rc=$?
    if [ -z "${pid:-}" ]; then
        echo "   lost track of ${#job_what[@]} job(s): ${job_what[*]}"
        failed=$((failed + 1))
        break
    fi
    read -r kind what _ <<<"${job_what[$pid]}"
    case $kind in
    build) build_done "$what" "$rc" ;;
    check) check_report "$what" "$rc" ;;
    spec) spec_report "$pid" "$rc" ;;
    esac
    unset "job_what[$pid]" "job_start[$pid]" "job_tmux[$pid]" "job_slot[$pid]"
    pool_fill
done
# Specs whose build failed never ran.
for item in "${queue[@]}"; do echo "   not run (no build): $item"; done

# The TAP of each pass, in spec order.
for pass in plain asan; do
    [ -d "$LOGDIR/$pass" ] || continue
    for spec in $SPECS; do cat "$LOGDIR/$pass/$(basename "$spec" .lua).tap" 2>/dev/null; done >"$LOGDIR/$pass.tap"
done

if [ "$mode" != "--plain-only" ] && [ "$asan_built" = 1 ]; then
    if find "$LOGDIR" -name 'tide-test-*.log' -exec grep -l -E \
        'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' {} + >"$LOGDIR/sanitizer-hits" 2>/dev/null \
        && [ -s "$LOGDIR/sanitizer-hits" ]; then
        echo "   sanitizer reports in server logs:"
        sed 's/^/     /' "$LOGDIR/sanitizer-hits"
        failed=$((failed + 1))
    fi
fi

# Keep the times of this run for the next one's order (and the others').
if [ "${#times[@]}" -gt 0 ]; then
    {
        for key in "${!times[@]}"; do echo "$key ${times[$key]}"; done
        [ -f "$TIMES" ] && awk 'NR == FNR { seen[$1 " " $2] = 1; next } !seen[$1 " " $2]' \
            <(for key in "${!times[@]}"; do echo "$key"; done) "$TIMES"
    } | sort >"$TIMES.new" && mv "$TIMES.new" "$TIMES"
fi

[ "$skipped" -eq 0 ] || echo "$skipped skipped (see the lines above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
