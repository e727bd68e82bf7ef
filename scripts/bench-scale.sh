#!/usr/bin/env bash
# Subscription scale, tide against nats-server (run by `make bench` after
# scripts/bench.sh):
#
#   subs       N SUBs on N subjects from one connection, after traffic on
#              4,000 subjects (the subject cache is full): ms to the PONG
#   close      that connection closes: the longest PING round trip of a
#              second client meanwhile (how long the server answered nobody)
#   close one  the same with N subscriptions on one subject
#
# each at N = BENCH_SCALE_SMALL (default 10000) and BENCH_SCALE_N (default
# 100000), plus the growth per subscription between the two sizes (µs per
# subscription added).  Both servers are started fresh for every run, run
# alternately (the order flips every repetition), BENCH_REPEAT times
# (default 3); the table shows medians and the ratio tide/nats-server.
# The work of one run is in bench/scale.lua.  Loopback only; each client run
# is bounded by `timeout`.  Results also go to build/bench-scale.md.
set -u
cd "$(dirname "$0")/.." || exit 2
. scripts/bench-lib.sh

BUILD=${BUILD:-build}
REPEAT=${BENCH_REPEAT:-3}
SMALL=${BENCH_SCALE_SMALL:-10000}
BIG=${BENCH_SCALE_N:-100000}
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
LOGDIR=$BUILD/bench-logs
SAMPLES=$LOGDIR/scale-samples.tsv
MD=$BUILD/bench-scale.md
FAILED=0
SERVER_PID=

die() { echo "bench-scale: $*" >&2; exit 2; }
[ -x "$BUILD/tide" ] || die "$BUILD/tide not built (run: make all)"
command -v "$NATS_BIN" >/dev/null 2>&1 || die "$NATS_BIN not found"
case "$REPEAT$SMALL$BIG" in *[!0-9]*) die "BENCH_* values must be integers" ;; esac
mkdir -p "$LOGDIR"
: > "$SAMPLES"

cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; }
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
    [ -n "$SERVER_PID" ] || return 0
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
}

sample() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$SAMPLES"; }

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

echo "subscription scale: $REPEAT repetition(s), N = $SMALL and $BIG"
for r in $(seq 1 "$REPEAT"); do
    order="tide nats"
    [ $((r % 2)) = 0 ] && order="nats tide"
    for scen in many one; do
        for n in "$SMALL" "$BIG"; do
            for s in $order; do run "$s" "$scen" "$n"; done
        done
    done
done

# Growth per subscription from the medians: (big - small) / (BIG - SMALL), in µs.
growth() { # key side
    awk -F'\t' -v k="$1" -v s="$2" -v a="$SMALL" -v b="$BIG" '
        function med(arr, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
            return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
        }
        $2 == s && $1 == k "." a { x[++nx] = $3 }
        $2 == s && $1 == k "." b { y[++ny] = $3 }
        END { if (nx && ny) printf "%.3f", (med(y, ny) - med(x, nx)) * 1000 / (b - a) }' "$SAMPLES"
}
for k in subs close one; do
    for s in tide nats; do
        g=$(growth "$k" "$s")
        [ -n "$g" ] && sample "$k.growth" "$s" "$g"
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
one.growth|  growth per subscription (us)|raw|lower"
rows=$(table "$ROWS")
echo
echo "Medians of $REPEAT run(s); ratio = tide / nats-server; stalls below ~1 ms are the PING round trip itself."
echo "$rows" | awk -F'|' '{ printf "  %-72s %10s %10s %6s  %s\n", $1, $2, $3, $4, $5 }'
{
    echo "Subscription scale, medians of $REPEAT run(s); $(nproc) CPU(s), $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo); $(date -u '+%F %H:%M UTC')"
    echo
    md_table "$rows"
} > "$MD"
[ "$FAILED" = 0 ] || { echo "bench-scale: some runs failed" >&2; exit 1; }
