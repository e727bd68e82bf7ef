#!/usr/bin/env bash
# Scale: every row at two sizes, tide against nats-server in the same run
# (run by `make bench` after scripts/bench.sh and scripts/bench-js.sh).
# Rows, by group (BENCH_SCALE_ROWS, default "subs fanout restart hold idle"):
#
#   subs     N SUBs on N subjects from one connection, after traffic on
#            4,000 subjects (the subject cache is full): ms to the PONG;
#            that connection closes: the longest PING round trip of a second
#            client meanwhile (how long the server answered nobody); the
#            same close with N subscriptions on one subject.
#            N = BENCH_SCALE_SMALL (default 10000) and BENCH_SCALE_N
#            (default 100000); growth in µs per subscription.
#   hold     N subscriptions on N subjects held by one connection (same two
#            N): server RSS, and the rate of BENCH_SCALE_PUBS (default
#            2000000) 16 B publishes on a subject none matches, and the
#            server's CPU per publish; growth in bytes of RSS per
#            subscription and ns of CPU per publish per 1,000 subscriptions.
#   fanout   1 publisher -> 10 and -> 1,000 subscriber connections, 128 B,
#            BENCH_SCALE_FANOUT_DELIVERIES (default 2000000) deliveries at
#            both sizes: deliveries/s and server CPU ns per delivery; growth
#            in ns per delivery per connection.
#   idle     1,000 and 10,000 idle connections (BENCH_SCALE_IDLE_SMALL,
#            BENCH_SCALE_IDLE_N): server RSS and the PING p99 of one more
#            client (BENCH_SCALE_PINGS, default 2000, round trips); growth
#            in bytes of RSS per connection.  Needs `ulimit -n` above N.
#   restart  BENCH_SCALE_RESTART_SMALL and BENCH_SCALE_RESTART_N events of
#            1 KiB (defaults 500000 and 1000000: 0.5 and 1 GiB) stored in a
#            stream (JetStream, file storage, for nats-server), clean stop,
#            exec -> PONG on restart; growth in ms per GiB.  This runs
#            scripts/bench-js.sh's recovery1k scenario (its own results and
#            samples are kept as they were).  The slow group: it writes
#            1.5 GiB per server and repetition; leave it out with
#            BENCH_SCALE_ROWS if the disk or the time is short.
#
# Both servers are started fresh for every run, run alternately (the order
# flips every repetition), BENCH_REPEAT times (default 3); the table shows
# medians and the ratio tide/nats-server.  The client work of the subs,
# hold and idle runs is in bench/scale.lua; fan-out and idle connections use
# build/nats_bench.  Loopback only; each client run is bounded by
# `timeout`.  Results also go to build/bench-scale.md.
set -u
cd "$(dirname "$0")/.." || exit 2
. scripts/bench-lib.sh

BUILD=${BUILD:-build}
REPEAT=${BENCH_REPEAT:-3}
SMALL=${BENCH_SCALE_SMALL:-10000}
BIG=${BENCH_SCALE_N:-100000}
ROWSET=${BENCH_SCALE_ROWS:-subs fanout restart hold idle}
PUBS=${BENCH_SCALE_PUBS:-2000000}
FAN_DELIV=${BENCH_SCALE_FANOUT_DELIVERIES:-2000000}
FAN_SMALL=10
FAN_BIG=1000
IDLE_SMALL=${BENCH_SCALE_IDLE_SMALL:-1000}
IDLE_BIG=${BENCH_SCALE_IDLE_N:-10000}
PINGS=${BENCH_SCALE_PINGS:-2000}
REST_SMALL=${BENCH_SCALE_RESTART_SMALL:-500000}
REST_BIG=${BENCH_SCALE_RESTART_N:-1000000}
BENCH=$BUILD/nats_bench
CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tide-bench-scale.XXXXXX") || exit 2
IDLE_CLIENT=
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
LOGDIR=$BUILD/bench-logs
SAMPLES=$LOGDIR/scale-samples.tsv
MD=$BUILD/bench-scale.md
FAILED=0
SERVER_PID=

die() { echo "bench-scale: $*" >&2; exit 2; }
[ -x "$BUILD/tide" ] || die "$BUILD/tide not built (run: make all)"
command -v "$NATS_BIN" >/dev/null 2>&1 || die "$NATS_BIN not found"
[ -x "$BENCH" ] || die "$BENCH not built (run: make $BENCH)"
case "$REPEAT$SMALL$BIG$PUBS$FAN_DELIV$IDLE_SMALL$IDLE_BIG$PINGS$REST_SMALL$REST_BIG" in *[!0-9]*) die "BENCH_* values must be integers" ;; esac
mkdir -p "$LOGDIR"
: > "$SAMPLES"

cleanup() {
    exec 7>&- 2>/dev/null
    [ -n "$IDLE_CLIENT" ] && kill "$IDLE_CLIENT" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
want() { case " $ROWSET " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
trap cleanup EXIT

start_server() { # side port
    case "$1" in
        tide) "$BUILD/tide" serve --no-http -a 127.0.0.1 -p "$2" >>"$LOGDIR/scale-tide.log" 2>&1 & ;;
        nats) "$NATS_BIN" -a 127.0.0.1 -p "$2" >>"$LOGDIR/scale-nats.log" 2>&1 & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

# run SIDE SCENARIO N: one run on a fresh server; samples subs.N / close.N
# (scenario many) or one.N (scenario one).
run() {
    local side=$1 scen=$2 n=$3 port line
    port=$(free_port)
    if ! start_server "$side" "$port"; then
        echo "  !! $side did not start" >&2; FAILED=1; stop_server; return
    fi
    line=$(timeout -k 5 300 lua5.4 bench/scale.lua "$scen" "$port" "$n" 2>>"$LOGDIR/scale-client.log" | grep -m1 '^RESULT ')
    stop_server
    if [ -z "$line" ]; then
        echo "  !! $side $scen $n failed (see $LOGDIR/scale-client.log)" >&2
        FAILED=1
        return
    fi
    local subs stall
    subs=$(echo "$line" | sed -n 's/.*subs_ms=\([0-9.]*\).*/\1/p')
    stall=$(echo "$line" | sed -n 's/.*stall_ms=\([0-9.]*\).*/\1/p')
    if [ "$scen" = many ]; then
        sample "subs.$n" "$side" "$subs"
        sample "close.$n" "$side" "$stall"
    else
        sample "one.$n" "$side" "$stall"
    fi
    printf '  %-11s %-4s N=%-7s subs %8s ms  stall %8s ms\n' "$side" "$scen" "$n" "$subs" "$stall"
}

# hold SIDE N: N subscriptions held; samples rss.N (KiB) and pub.N (msgs/s).
run_hold() {
    local side=$1 n=$2 port out=$TMP/hold.out rss="" line
    port=$(free_port) || { FAILED=1; return; }
    if ! start_server "$side" "$port"; then
        echo "  !! $side did not start" >&2; FAILED=1; stop_server; return
    fi
    timeout -k 5 300 lua5.4 bench/scale.lua hold "$port" "$n" "$PUBS" > "$out" 2>>"$LOGDIR/scale-client.log" &
    local cpid=$!
    for _ in $(seq 1 3000); do
        grep -q '^READY' "$out" 2>/dev/null && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    local c0="" c1=""
    if grep -q '^READY' "$out"; then
        sleep 1
        rss=$(rss_kb "$SERVER_PID"); c0=$(cpu_ticks "$SERVER_PID")
        for _ in $(seq 1 3000); do
            grep -q '^DONE' "$out" 2>/dev/null && { c1=$(cpu_ticks "$SERVER_PID"); break; }
            kill -0 "$cpid" 2>/dev/null || break
            sleep 0.05
        done
    fi
    wait "$cpid"
    stop_server
    line=$(grep -m1 '^RESULT ' "$out")
    if [ -z "$line" ] || [ -z "$rss" ] || [ -z "$c1" ]; then
        echo "  !! $side hold $n failed (see $LOGDIR/scale-client.log)" >&2; FAILED=1; return
    fi
    sample "rss.$n" "$side" "$rss"
    sample "pub.$n" "$side" "$(field pub_rate "$line")"
    local ns
    ns=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" -v n="$PUBS" 'BEGIN { printf "%.1f", (b - a) / t * 1e9 / n }')
    sample "pubns.$n" "$side" "$ns"
    printf '  %-11s hold N=%-7s RSS %8s KiB  publish %10s msg/s  %6s ns CPU per publish\n' "$side" "$n" "$rss" "$(field pub_rate "$line")" "$ns"
}

# fanout SIDE K: FAN_DELIV deliveries of 128 B to K subscriber connections;
# samples fan.K (deliveries/s) and fanns.K (server CPU ns per delivery).
run_fanout() {
    local side=$1 k=$2 port msgs c0 c1 line ns
    msgs=$(( FAN_DELIV / k ))
    port=$(free_port) || { FAILED=1; return; }
    if ! start_server "$side" "$port"; then
        echo "  !! $side did not start" >&2; FAILED=1; stop_server; return
    fi
    c0=$(cpu_ticks "$SERVER_PID")
    line=$(timeout -k 5 240 "$BENCH" pubsub --url "nats://127.0.0.1:$port" --size 128 --msgs "$msgs" \
           --subs "$k" --timeout 180 2>>"$LOGDIR/scale-client.log" | grep -m1 '^RESULT ')
    c1=$(cpu_ticks "$SERVER_PID")
    stop_server
    if [ -z "$line" ]; then
        echo "  !! $side fanout $k failed (see $LOGDIR/scale-client.log)" >&2; FAILED=1; return
    fi
    ns=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" -v n="$msgs" -v k="$k" 'BEGIN { printf "%.0f", (b - a) / t * 1e9 / (n * k) }')
    sample "fan.$k" "$side" "$(field rate "$line")"
    sample "fanns.$k" "$side" "$ns"
    printf '  %-11s fanout 1->%-5s %12s deliveries/s  %6s ns CPU per delivery\n' "$side" "$k" "$(field rate "$line")" "$ns"
}

# idle SIDE N: N idle connections held by nats_bench; samples irss.N (KiB)
# and ip99.N (ms, PING p99 of one more client meanwhile).
run_idle() {
    local side=$1 n=$2 port out=$TMP/idle.out line rss="" ping=""
    port=$(free_port) || { FAILED=1; return; }
    if ! start_server "$side" "$port"; then
        echo "  !! $side did not start" >&2; FAILED=1; stop_server; return
    fi
    idle_hold "nats://127.0.0.1:$port" "$n" 240 120 "$out" "$LOGDIR/scale-client.log" 1500
    line=$LINE
    if [ "${line%% *}" = RESULT ]; then
        sleep 1
        rss=$(rss_kb "$SERVER_PID")
        ping=$(timeout -k 5 120 lua5.4 bench/scale.lua ping "$port" "$PINGS" 2>>"$LOGDIR/scale-client.log" | grep -m1 '^RESULT ')
    fi
    idle_release
    stop_server
    if [ -z "$rss" ] || [ -z "$ping" ]; then
        echo "  !! $side idle $n failed: ${line:-no result} (see $LOGDIR/scale-client.log)" >&2; FAILED=1; return
    fi
    sample "irss.$n" "$side" "$rss"
    sample "ip99.$n" "$side" "$(field p99_ms "$ping")"
    printf '  %-11s idle N=%-7s RSS %8s KiB  PING p99 %s ms\n' "$side" "$n" "$rss" "$(field p99_ms "$ping")"
}

# restart: scripts/bench-js.sh's recovery1k at both sizes (it alternates the
# servers itself); its ready samples become rst.N.  Its own results file and
# samples are put back as they were.
run_restart() {
    local n js_samples=$BUILD/bench-js-logs/samples.tsv js_md=$BUILD/bench-js-results.md
    for f in "$js_samples" "$js_md"; do [ -f "$f" ] && cp "$f" "$TMP/$(basename "$f").keep"; done
    for n in "$REST_SMALL" "$REST_BIG"; do
        echo "  restart with $n x 1 KiB stored (scripts/bench-js.sh recovery1k):"
        if ! BENCH_ONLY=recovery1k BENCH_RECOVERY_N=$n BENCH_REPEAT=$REPEAT timeout -k 10 3600 \
                scripts/bench-js.sh > "$LOGDIR/scale-restart.$n.log" 2>&1; then
            echo "  !! restart $n: bench-js.sh failed (see $LOGDIR/scale-restart.$n.log)" >&2; FAILED=1
        fi
        grep '^  [a-z-]* *recovery1k ' "$LOGDIR/scale-restart.$n.log" | sed 's/^/  /'
        awk -F'\t' -v n="$n" '$1 == "recovery1k.ready" && ($2 == "tide" || $2 == "nats") { printf "rst.%s\t%s\t%s\n", n, $2, $3 }' \
            "$js_samples" >> "$SAMPLES"
    done
    for f in "$js_samples" "$js_md"; do
        if [ -f "$TMP/$(basename "$f").keep" ]; then cp "$TMP/$(basename "$f").keep" "$f"; else rm -f "$f"; fi
    done
}

if want restart; then
    for b in js_bench fsync_probe; do
        [ -x "$BUILD/$b" ] || die "$BUILD/$b not built (run: make $BUILD/$b), needed by the restart rows"
    done
fi
echo "scale: $REPEAT repetition(s); rows: $ROWSET"
for r in $(seq 1 "$REPEAT"); do
    order="tide nats"
    [ $((r % 2)) = 0 ] && order="nats tide"
    if want subs; then
        for scen in many one; do
            for n in "$SMALL" "$BIG"; do
                for s in $order; do run "$s" "$scen" "$n"; done
            done
        done
    fi
    if want hold; then
        for n in "$SMALL" "$BIG"; do for s in $order; do run_hold "$s" "$n"; done; done
    fi
    if want fanout; then
        for k in "$FAN_SMALL" "$FAN_BIG"; do for s in $order; do run_fanout "$s" "$k"; done; done
    fi
    if want idle; then
        for n in "$IDLE_SMALL" "$IDLE_BIG"; do for s in $order; do run_idle "$s" "$n"; done; done
    fi
done
want restart && run_restart

# Growth per unit from the medians: (big - small) * SCALE / (B - A).  For
# the restart rows SCALE is the 1 KiB events in a GiB (1048576): ms per GiB.
growth() { # key side A B SCALE
    awk -F'\t' -v k="$1" -v s="$2" -v a="$3" -v b="$4" -v m="$5" '
        function med(arr, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
            return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
        }
        $2 == s && $3 != "ERR" && $1 == k "." a { x[++nx] = $3 }
        $2 == s && $3 != "ERR" && $1 == k "." b { y[++ny] = $3 }
        END { if (nx && ny) printf "%.3f", (med(y, ny) - med(x, nx)) * m / (b - a) }' "$SAMPLES"
}
for s in tide nats; do
    for spec in "subs $SMALL $BIG 1000" "close $SMALL $BIG 1000" "one $SMALL $BIG 1000" \
                "rss $SMALL $BIG 1024" "pubns $SMALL $BIG 1000" "fanns $FAN_SMALL $FAN_BIG 1" \
                "irss $IDLE_SMALL $IDLE_BIG 1024" "ip99 $IDLE_SMALL $IDLE_BIG 1000000" \
                "rst $REST_SMALL $REST_BIG 1048576"; do
        set -- $spec
        g=$(growth "$1" "$s" "$2" "$3" "$4")
        [ -n "$g" ] && sample "$1.growth" "$s" "$g"
    done
done

ROWS="subs.$SMALL|$SMALL SUBs on one connection, after traffic (ms)|ms|lower
subs.$BIG|$BIG SUBs on one connection, after traffic (ms)|ms|lower
subs.growth|  growth per SUB (us)|raw|lower
close.$SMALL|close with $SMALL subscriptions: no answer for (ms)|raw|lower
close.$BIG|close with $BIG subscriptions: no answer for (ms)|raw|lower
close.growth|  growth per subscription (us)|raw|lower
one.$SMALL|close with $SMALL subscriptions on one subject: no answer for (ms)|raw|lower
one.$BIG|close with $BIG subscriptions on one subject: no answer for (ms)|raw|lower
one.growth|  growth per subscription (us)|raw|lower
rss.$SMALL|RSS with $SMALL subscriptions (MiB)|mib|lower
rss.$BIG|RSS with $BIG subscriptions (MiB)|mib|lower
rss.growth|  growth per subscription (bytes)|raw|lower
pub.$SMALL|publish with $SMALL subscriptions present (msgs/s)|rate|higher
pub.$BIG|publish with $BIG subscriptions present (msgs/s)|rate|higher
pubns.$SMALL|publish with $SMALL subscriptions: server CPU per publish (ns)|raw|lower
pubns.$BIG|publish with $BIG subscriptions: server CPU per publish (ns)|raw|lower
pubns.growth|  growth per 1,000 subscriptions (ns of CPU per publish)|raw|lower
fan.$FAN_SMALL|fan-out 1 -> $FAN_SMALL connections, 128 B (deliveries/s)|rate|higher
fan.$FAN_BIG|fan-out 1 -> $FAN_BIG connections, 128 B (deliveries/s)|rate|higher
fanns.$FAN_SMALL|fan-out 1 -> $FAN_SMALL: server CPU per delivery (ns)|ns|lower
fanns.$FAN_BIG|fan-out 1 -> $FAN_BIG: server CPU per delivery (ns)|ns|lower
fanns.growth|  growth per connection (ns per delivery)|raw|lower
irss.$IDLE_SMALL|RSS with $IDLE_SMALL idle connections (MiB)|mib|lower
irss.$IDLE_BIG|RSS with $IDLE_BIG idle connections (MiB)|mib|lower
irss.growth|  growth per connection (bytes)|raw|lower
ip99.$IDLE_SMALL|PING p99 with $IDLE_SMALL idle connections (ms)|raw|lower
ip99.$IDLE_BIG|PING p99 with $IDLE_BIG idle connections (ms)|raw|lower
ip99.growth|  growth per 1,000 connections (us of p99)|raw|lower
rst.$REST_SMALL|restart with $REST_SMALL x 1 KiB stored: exec to PONG (ms)|ms|lower
rst.$REST_BIG|restart with $REST_BIG x 1 KiB stored: exec to PONG (ms)|ms|lower
rst.growth|  growth per GiB stored (ms)|raw|lower"
rows=$(table "$ROWS")
echo
echo "Medians of $REPEAT run(s); ratio = tide / nats-server; stalls below ~1 ms are the PING round trip itself."
echo "$rows" | awk -F'|' '{ printf "  %-72s %10s %10s %6s  %s\n", $1, $2, $3, $4, $5 }'
{
    echo "Scale, every row at two sizes, medians of $REPEAT run(s); $(nproc) CPU(s), $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo); $(date -u '+%F %H:%M UTC')"
    echo
    md_table "$rows"
} > "$MD"
[ "$FAILED" = 0 ] || { echo "bench-scale: some runs failed" >&2; exit 1; }
