#!/usr/bin/env bash
# Side-by-side benchmark of tide against nats-server (the runner behind
# `make bench`, which builds build/tide and build/nats_bench first).
#
# Both servers are started on free loopback ports (127.0.0.1 only) and every
# scenario is run against both alternately in the same run (the order flips
# on every repetition), R times; the table shows medians and the ratio
# tide/nats-server.  Each repetition starts both servers fresh, so the idle
# RSS figures are those of a just-started server.
#
# Scenarios (all through build/nats_bench, one libnats client process):
#   idle       server VmRSS just after start, and with BENCH_IDLE_CONNS
#              (default 1000) idle client connections open
#   pubsub16   1 publisher -> 1 subscriber,   16 B payload, BENCH_MSGS messages
#   pubsub128  1 publisher -> 1 subscriber,  128 B payload
#   pubsub1k   1 publisher -> 1 subscriber, 1024 B payload
#   fanout4    1 publisher -> 4 subscribers, 128 B payload (deliveries/s)
#   fanout10 fanout100 fanout1000
#              1 publisher -> 10, 100, 1000 subscriber connections, 128 B,
#              BENCH_FANOUT_DELIVERIES deliveries in all (messages = that /
#              connections): deliveries/s and server CPU ns per delivery
#   reqrep     BENCH_RR_N (default 20000) sequential requests, 16 B payload;
#              round-trip p50 / p99 / p99.9 / mean in microseconds.  Made in
#              blocks of BENCH_RR_BLOCK (default 2000) requests that alternate
#              between the servers; each server's blocks are pooled.
#
# Environment:
#   BENCH_REPEAT       repetitions per scenario and server (default 3)
#   BENCH_MSGS         messages per pub/sub scenario (default 1000000)
#   BENCH_RR_N         requests in the req/reply scenario (default 20000)
#   BENCH_RR_BLOCK     requests per alternating req/reply block (default 2000)
#   BENCH_IDLE_CONNS   idle connections (default 1000)
#   BENCH_FANOUT_DELIVERIES  deliveries per fanout10/100/1000 run (default 4000000)
#   BENCH_ONLY         space-separated subset of the scenario ids above
#   NATS_SERVER_BIN    nats-server binary (default: nats-server on PATH)
#   TIDE_BIN_OVERRIDE  command used instead of "build/tide serve" for the
#                      tide column; it is given "-a 127.0.0.1 -p PORT".
#                      TIDE_BIN_OVERRIDE=nats-server runs nats-server against
#                      itself, which checks the runner and shows the noise
#                      floor of the machine (ratios should all be near 1).
#   BUILD              build directory (default build)
#
# The tide binary is copied to a temporary directory and run from there, so a
# rebuild of build/tide during the run cannot mix two versions in one table.
# A server command must exec the server itself (not a wrapper that forks it):
# its PID is the one whose VmRSS and CPU time are read from /proc.
#
# Output: the table on stdout, the same table in markdown in
# $BUILD/bench-results.md, raw samples in $BUILD/bench-logs/samples.tsv and
# server logs in $BUILD/bench-logs/.  Exits non-zero if any scenario failed
# for either server (error line, missing messages, server crash, timeout).
set -u

cd "$(dirname "$0")/.." || exit 2
. scripts/bench-lib.sh

BUILD=${BUILD:-build}
BENCH=$BUILD/nats_bench
REPEAT=${BENCH_REPEAT:-3}
MSGS=${BENCH_MSGS:-1000000}
RR_N=${BENCH_RR_N:-20000}
RR_BLOCK=${BENCH_RR_BLOCK:-2000}
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
FANOUT_DELIVERIES=${BENCH_FANOUT_DELIVERIES:-4000000}
ONLY=${BENCH_ONLY:-}
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
TIDE_CMD=${TIDE_BIN_OVERRIDE:-$BUILD/tide serve --no-http}
LOGDIR=$BUILD/bench-logs
SAMPLES=$LOGDIR/samples.tsv
MD=$BUILD/bench-results.md
SIDES="tide nats"

die() { echo "bench: $*" >&2; exit 2; }

[ -x "$BENCH" ] || die "$BENCH not built (run: make build/nats_bench)"
command -v "$NATS_BIN" >/dev/null 2>&1 || die "$NATS_BIN not found"
set -- $TIDE_CMD
command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || die "$1 not found (run: make all)"
set --
case "$REPEAT$MSGS$RR_N$RR_BLOCK$IDLE_CONNS$FANOUT_DELIVERIES" in *[!0-9]*) die "BENCH_* values must be integers" ;; esac
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be >= 1"
[ "$RR_BLOCK" -ge 1 ] && [ "$RR_N" -ge 1 ] || die "BENCH_RR_N and BENCH_RR_BLOCK must be >= 1"

mkdir -p "$LOGDIR"
: > "$SAMPLES"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tide-bench.XXXXXX")
TIDE_SHOWN=$TIDE_CMD
TIDE_ID=""
if [ -z "${TIDE_BIN_OVERRIDE:-}" ]; then
    # Run a snapshot, so that a rebuild during the run cannot mix versions.
    cp "$BUILD/tide" "$TMP/tide" || die "cannot copy $BUILD/tide"
    TIDE_CMD="$TMP/tide serve --no-http"
    TIDE_ID="binary sha256 $(sha256sum "$TMP/tide" | cut -c1-12), "
fi
FAILED=0
declare -A PID PORT VERSION
IDLE_CLIENT=""

cleanup() {
    exec 7>&- 2>/dev/null
    [ -n "$IDLE_CLIENT" ] && kill "$IDLE_CLIENT" 2>/dev/null
    for s in $SIDES; do stop_server "$s"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

want() { [ -z "$ONLY" ] || case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

server_cmd() {
    case "$1" in
        tide) echo "$TIDE_CMD" ;;
        nats) echo "$NATS_BIN" ;;
    esac
}

start_server() {
    local side=$1 port cmd
    port=$(free_port)
    cmd=$(server_cmd "$side")
    PORT[$side]=$port
    # shellcheck disable=SC2086  # the command may carry arguments
    $cmd -a 127.0.0.1 -p "$port" >>"$LOGDIR/$side.log" 2>&1 &
    PID[$side]=$!
    wait_ping "$port" 200 "${PID[$side]}" "$TMP/ping.$side" && return 0
    echo "bench: $(label "$side") did not come up on port $port (see $LOGDIR/$side.log)" >&2
    tail -n 5 "$LOGDIR/$side.log" >&2
    stop_server "$side"
    return 1
}

stop_server() {
    stop_pid "${PID[$1]:-}" 5
    PID[$1]=""
}

# After a run: a crashed server is brought back for the rest (check_server
# calls this).
on_server_gone() { start_server "$1" || true; }

# ------------------------------------------------------------ scenarios

scen_pubsub() {   # side key size subs
    local side=$1 key=$2 size=$3 subs=$4
    run_client "$side" "$key" 120 pubsub --size "$size" --msgs "$MSGS" --subs "$subs" \
        --timeout 60 || return
    sample "$key" "$side" "$(field rate "$LINE")"
    sample "$key.cpu" "$side" "$CPU_S"
    printf '  %-11s %-9s %12s msg/s\n' "$(label "$side")" "$key" "$(field rate "$LINE")"
}

# Fan-out to many connections: the same number of deliveries at every size,
# so the CPU per delivery shows how the cost grows with the connections.
scen_fanout() {   # side key subs
    local side=$1 key=$2 subs=$3 msgs
    msgs=$(( FANOUT_DELIVERIES / subs ))
    run_client "$side" "$key" 180 pubsub --size 128 --msgs "$msgs" --subs "$subs" \
        --timeout 120 || return
    sample "$key" "$side" "$(field rate "$LINE")"
    sample "$key.cpu" "$side" "$CPU_S"
    sample "$key.ns" "$side" "$(awk -v c="$CPU_S" -v n="$msgs" -v k="$subs" 'BEGIN { printf "%.0f", c * 1e9 / (n * k) }')"
    printf '  %-11s %-10s %12s deliveries/s  %s s CPU\n' "$(label "$side")" "$key" "$(field rate "$LINE")" "$CPU_S"
}

# Request/reply latency reacts to every burst of background load, so the
# RR_N requests per server are made in blocks of RR_BLOCK that alternate
# between the servers (the first server flips every block), and each
# server's round trips of all its blocks are pooled for the percentiles.
scen_reqrep_pair() {   # order
    local key=reqrep s b n done_n blocks order2 stats
    local -A ok cpu
    for s in $1; do
        rm -f "$TMP/rr.$s"
        ok[$s]=1; cpu[$s]=0
        ensure_server "$s" "$key" || ok[$s]=0
    done
    blocks=$(( (RR_N + RR_BLOCK - 1) / RR_BLOCK ))
    for b in $(seq 1 "$blocks"); do
        done_n=$(( (b - 1) * RR_BLOCK ))
        n=$(( RR_N - done_n < RR_BLOCK ? RR_N - done_n : RR_BLOCK ))
        order2=$1
        [ $((b % 2)) = 0 ] && order2=$(echo "$1" | awk '{ print $2, $1 }')
        for s in $order2; do
            [ "${ok[$s]}" = 1 ] || continue
            if run_client "$s" "$key" 120 reqrep --n "$n" --size 16 --timeout 90 \
                   --raw "$TMP/rr.$s"; then
                cpu[$s]=$(awk -v a="${cpu[$s]}" -v b="$CPU_S" 'BEGIN { printf "%.2f", a + b }')
            else
                ok[$s]=0
            fi
        done
    done
    for s in $1; do
        [ "${ok[$s]}" = 1 ] || continue
        stats=$(sort -n "$TMP/rr.$s" | awk '
            function at(p,   r) { r = int(p * NR); if (r < p * NR) r++; if (r < 1) r = 1; return v[r] }
            { v[NR] = $1; sum += $1 }
            END { printf "%.1f %.1f %.1f %.1f %d", at(0.50), at(0.99), at(0.999), sum / NR, NR }')
        set -- $stats
        if [ "${5:-0}" != "$RR_N" ]; then
            record_error "$key" "$s" "expected $RR_N round trips, got ${5:-0}"
            continue
        fi
        sample "$key.p50" "$s" "$1"
        sample "$key.p99" "$s" "$2"
        sample "$key.p999" "$s" "$3"
        sample "$key.mean" "$s" "$4"
        sample "$key.cpu" "$s" "${cpu[$s]}"
        printf '  %-11s %-9s p50 %s us  p99 %s us  p99.9 %s us  (%s blocks)\n' \
            "$(label "$s")" "$key" "$1" "$2" "$3" "$blocks"
    done
}

scen_idle() {
    local side=$1 key=idle pid rss0 rss1 out=$TMP/idle.out line c0 c1
    alive "$side" || { record_error "$key" "$side" "server not running"; return; }
    pid=${PID[$side]}
    rss0=$(rss_kb "$pid")
    c0=$(cpu_ticks "$pid")
    idle_hold "nats://127.0.0.1:${PORT[$side]}" "$IDLE_CONNS" 90 60 "$out" "$LOGDIR/client.log" 700
    line=$LINE
    if [ "${line%% *}" = RESULT ]; then
        sleep 1   # let the server finish any per-connection work
        rss1=$(rss_kb "$pid")
    fi
    idle_release
    local rc=$IDLE_RC
    c1=$(cpu_ticks "$pid")
    echo "$(label "$side") $(cat "$out")" >> "$LOGDIR/client.log"
    if [ "${line%% *}" != RESULT ] || [ $rc -ne 0 ] || [ -z "${rss1:-}" ]; then
        record_error "$key" "$side" "${line:-no result} $(grep '^DONE' "$out") (exit $rc)"
        check_server "$side" "$key" counted
        return
    fi
    check_server "$side" "$key" || return
    sample "$key.rss0" "$side" "$rss0"
    sample "$key.rss1" "$side" "$rss1"
    sample "$key.perconn" "$side" "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')"
    sample "$key.cpu" "$side" "$(ticks_to_s "$c0" "$c1")"
    printf '  %-11s %-9s RSS %s KiB idle, %s KiB with %s connections\n' \
        "$(label "$side")" "$key" "$rss0" "$rss1" "$IDLE_CONNS"
}

# Before a scenario: if the server has gone away since the last one, record
# that (with its exit status) against this scenario and start it again.
ensure_server() {
    local side=$1 key=$2 rc
    alive "$side" && return 0
    if [ -n "${PID[$side]:-}" ]; then
        wait "${PID[$side]}" 2>/dev/null; rc=$?
        record_error "$key" "$side" "$(label "$side") exited (status $rc) before $key; see $LOGDIR/$side.log"
        tail -n 10 "$LOGDIR/$side.log" | sed 's/^/     /' >&2
        PID[$side]=""
    else
        record_error "$key" "$side" "$(label "$side") is not running"
    fi
    start_server "$side"
    return 1
}

run_scenario() {  # id side
    ensure_server "$2" "$1" || return
    case "$1" in
        idle)      scen_idle "$2" ;;
        pubsub16)  scen_pubsub "$2" pubsub16 16 1 ;;
        pubsub128) scen_pubsub "$2" pubsub128 128 1 ;;
        pubsub1k)  scen_pubsub "$2" pubsub1k 1024 1 ;;
        fanout4)   scen_pubsub "$2" fanout4 128 4 ;;
        fanout10)  scen_fanout "$2" fanout10 10 ;;
        fanout100) scen_fanout "$2" fanout100 100 ;;
        fanout1000) scen_fanout "$2" fanout1000 1000 ;;
    esac
}

# ---------------------------------------------------------------- header

cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
nats_version=$("$NATS_BIN" --version 2>&1 | head -n 1)
libnats_version=$(dpkg-query -W -f='${Version}' libnats-dev 2>/dev/null || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
[ -n "$(git status --porcelain -- src 2>/dev/null)" ] && commit="$commit (+ local changes)"

# ------------------------------------------------------------------- run

: > "$LOGDIR/client.log"
: > "$LOGDIR/errors.log"
: > "$LOGDIR/tide.log"
: > "$LOGDIR/nats.log"
SCENARIOS="idle pubsub16 pubsub128 pubsub1k fanout4 fanout10 fanout100 fanout1000 reqrep"
t_start=$(date +%s)

echo "tide benchmark: $REPEAT repetition(s), $MSGS messages per pub/sub run, $RR_N requests"
echo "  machine: $(nproc) CPU(s), $cpu_model, $mem_total RAM, Linux $(uname -r)"
echo "  tide:    $TIDE_SHOWN (${TIDE_ID}commit $commit)"
echo "  nats:    $nats_version; client libnats $libnats_version"

for r in $(seq 1 "$REPEAT"); do
    echo "repetition $r/$REPEAT"
    for s in $SIDES; do
        echo "=== repetition $r" >> "$LOGDIR/$s.log"
        start_server "$s" || { record_error start "$s" "server failed to start"; }
    done
    [ "$r" = 1 ] && for s in $SIDES; do
        info=$(cat "$TMP/ping.$s" 2>/dev/null)
        v=$(echo "$info" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
        VERSION[$s]=${v:-unknown}
    done
    # Alternate which server goes first, scenario by scenario.
    if [ $((r % 2)) = 1 ]; then order="tide nats"; else order="nats tide"; fi
    for sc in $SCENARIOS; do
        want "$sc" || continue
        if [ "$sc" = reqrep ]; then
            scen_reqrep_pair "$order"
            continue
        fi
        for s in $order; do
            run_scenario "$sc" "$s"
            sleep 0.3
        done
    done
    for s in $SIDES; do stop_server "$s"; done
done
elapsed=$(( $(date +%s) - t_start ))

# ----------------------------------------------------------------- table

# rows: key | label | kind (rate, us, kib, kib2, sec) | better
ROWS='pubsub16|pub/sub 1->1, 16 B (msgs/s)|rate|higher
pubsub128|pub/sub 1->1, 128 B (msgs/s)|rate|higher
pubsub1k|pub/sub 1->1, 1 KiB (msgs/s)|rate|higher
fanout4|fan-out 1->4, 128 B (msgs/s delivered)|rate|higher
fanout10|fan-out 1->10 connections, 128 B (deliveries/s)|rate|higher
fanout100|fan-out 1->100 connections, 128 B (deliveries/s)|rate|higher
fanout1000|fan-out 1->1000 connections, 128 B (deliveries/s)|rate|higher
fanout10.ns|fan-out 1->10, server CPU per delivery (ns)|ns|lower
fanout100.ns|fan-out 1->100, server CPU per delivery (ns)|ns|lower
fanout1000.ns|fan-out 1->1000, server CPU per delivery (ns)|ns|lower
reqrep.p50|req/reply p50 (us)|us|lower
reqrep.p99|req/reply p99 (us)|us|lower
reqrep.p999|req/reply p99.9 (us)|us|lower
reqrep.mean|req/reply mean (us)|us|lower
idle.rss0|server RSS, idle (MiB)|mib|lower
idle.rss1|server RSS, '"$IDLE_CONNS"' idle conns (MiB)|mib|lower
idle.perconn|RSS per idle connection (KiB)|kib|lower'
CPUROWS='idle.cpu|'"$IDLE_CONNS"' connections opened and closed|sec|lower
pubsub16.cpu|pub/sub 1->1, 16 B|sec|lower
pubsub128.cpu|pub/sub 1->1, 128 B|sec|lower
pubsub1k.cpu|pub/sub 1->1, 1 KiB|sec|lower
fanout4.cpu|fan-out 1->4, 128 B|sec|lower
fanout10.cpu|fan-out 1->10, 128 B|sec|lower
fanout100.cpu|fan-out 1->100, 128 B|sec|lower
fanout1000.cpu|fan-out 1->1000, 128 B|sec|lower
reqrep.cpu|req/reply|sec|lower'

MAIN=$(table "$ROWS")
CPU=$(table "$CPUROWS")

print_text() {
    local hdr=$1 body=$2
    { echo "$hdr"; echo "$body"; } | column -t -s'|' -o '  '
}

echo
echo "Results: medians of $REPEAT run(s) per server; ratio = tide / nats-server"
echo "(throughput: higher is better; latency, memory and CPU: lower is better)"
echo
print_text "scenario|tide|nats-server|ratio tide/nats|better" "$MAIN"
echo
echo "Server CPU time (user+sys seconds) spent during each scenario, median:"
echo
print_text "scenario|tide|nats-server|ratio tide/nats|better" "$CPU"
echo
echo "machine: $(nproc) CPU(s), $cpu_model, $mem_total, Linux $(uname -r)"
echo "servers: tide ${VERSION[tide]:-?} ($TIDE_SHOWN, ${TIDE_ID}commit $commit), nats-server ${VERSION[nats]:-?}"
echo "client:  build/nats_bench, libnats $libnats_version; run took ${elapsed}s"

{
    echo "Medians of $REPEAT run(s) per server, both servers measured alternately in"
    echo "the same run; ratio = tide / nats-server."
    echo
    md_table "$MAIN"
    echo
    echo "Server CPU time (user + sys seconds) during each scenario, median:"
    echo
    md_table "$CPU"
    echo
    echo "- Machine: $(nproc) CPU(s), $cpu_model, $mem_total RAM, Linux $(uname -r)"
    echo "- tide ${VERSION[tide]:-?} (\`$TIDE_SHOWN\`, ${TIDE_ID}commit $commit); nats-server ${VERSION[nats]:-?}; client libnats $libnats_version"
    echo "- Settings: BENCH_REPEAT=$REPEAT BENCH_MSGS=$MSGS BENCH_RR_N=$RR_N BENCH_RR_BLOCK=$RR_BLOCK BENCH_IDLE_CONNS=$IDLE_CONNS BENCH_FANOUT_DELIVERIES=$FANOUT_DELIVERIES${ONLY:+ BENCH_ONLY=\"$ONLY\"}; run took ${elapsed}s; $(date -u '+%Y-%m-%d %H:%M UTC')"
} > "$MD"
echo "markdown: $MD"

if [ "$FAILED" != 0 ]; then
    echo
    echo "FAILED scenarios:"
    sed 's/^/  /' "$LOGDIR/errors.log"
    exit 1
fi
exit 0
