#!/bin/bash
# The web console's cost (run by `make bench`):
#
#  1. core throughput, 1 publisher -> 1 subscriber, 200-byte envelopes on
#     order.created through bench/scripts/full.lua (upgrader, filter,
#     route), with no console open and with BENCH_CONSOLES (default 10)
#     pollers that ask what an open console page asks (/api/rates every
#     second, /api/flow every two), alternating, BENCH_REPEAT rounds
#     (default 3): medians, their ratio, and the server's CPU time per
#     event.  The issue's bound: at most 5% lower with ten consoles.
#  2. the server's CPU time per /api/rates and per /api/flow answer (wrk,
#     one connection, BENCH_CONSOLE_SECONDS each, default 3).  The sample
#     taken once a second while the console is in use builds the graph
#     /api/flow builds, without the nodes' details: it costs less than one
#     /api/flow answer.
#
# Nothing is counted per event for the console (its rates are those of
# counters the pipeline and the store keep anyway), so its cost per event
# is 0 by construction; round 1 shows the whole effect of open consoles.
# Results also go to build/bench-console.md.  Loopback only; bounded runs.
set -u
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROOT=$(pwd)
TIDE=${TIDE:-$ROOT/build/tide}
BENCH=$ROOT/build/nats_bench
REPEAT=${BENCH_REPEAT:-3}
MSGS=${BENCH_CONSOLE_MSGS:-300000}
CONSOLES=${BENCH_CONSOLES:-10}
SECS=${BENCH_CONSOLE_SECONDS:-3}
OUT=$ROOT/build/bench-console.md
LOGS=$ROOT/build/bench-logs
mkdir -p "$LOGS"
failed=0
SERVER_PID=
POLLERS=()

cleanup() {
    for p in "${POLLERS[@]}"; do kill "$p" 2>/dev/null; done
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
}
trap cleanup EXIT

TICK_NS=$((1000000000 / $(getconf CLK_TCK)))

start_tide() { # port http_port
    "$TIDE" serve -a 127.0.0.1 -p "$1" --http "127.0.0.1:$2" -c "$ROOT/bench/scripts/full.lua" \
        >"$LOGS/console-tide.log" 2>&1 &
    SERVER_PID=$!
    wait_ping "$1" 300 "$SERVER_PID" && return 0
    echo "tide did not start" >&2
    return 1
}

stop_tide() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

# N console pages in one process, each on a connection of its own kept
# alive (as a browser keeps it): the rates every second, the graph every
# two.  One process rather than N shells forking curl, whose own CPU
# would take the 2 cores from the server and the benchmark client.
pollers() { # host port n
    python3 - "$@" <<'PY'
import http.client, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = [http.client.HTTPConnection(host, port, timeout=5) for _ in range(n)]
tick = 0
while True:
    for c in conns:
        for path in ["/api/rates"] + (["/api/flow"] if tick % 2 == 0 else []):
            c.request("GET", path)
            c.getresponse().read()
    tick += 1
    time.sleep(1)
PY
}

echo "== console: throughput with 0 and $CONSOLES open consoles, $MSGS messages of 200 B, median of $REPEAT"
declare -A rates cpu
for r in $(seq 1 "$REPEAT"); do
    for n in 0 "$CONSOLES"; do
        port=$(free_port)
        hport=$(free_port)
        start_tide "$port" "$hport" || { failed=1; continue; }
        POLLERS=()
        if [ "$n" -gt 0 ]; then
            pollers 127.0.0.1 "$hport" "$n" >"$LOGS/console-pollers.log" 2>&1 &
            POLLERS+=($!)
        fi
        [ "$n" -gt 0 ] && sleep 2 # the pages are open and sampling runs
        t0=$(cpu_ticks "$SERVER_PID")
        line=$("$BENCH" pubsub --url "nats://127.0.0.1:$port" --size 200 --msgs "$MSGS" --subs 1 \
               --json --subject order.created --timeout 120 2>&1)
        t1=$(cpu_ticks "$SERVER_PID")
        for p in "${POLLERS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
        POLLERS=()
        stop_tide
        rate=$(echo "$line" | sed -n 's/.* rate=\([0-9]*\).*/\1/p')
        if [ -z "$rate" ]; then
            echo "   $n consoles: $line"
            failed=1
            continue
        fi
        rates[$n]="${rates[$n]:-} $rate"
        cpu[$n]="${cpu[$n]:-} $(( (t1 - t0) * TICK_NS / MSGS ))"
    done
done

echo "== console: server CPU per /api/ answer (wrk, 1 connection, $SECS s each)"
declare -A per
port=$(free_port)
hport=$(free_port)
if start_tide "$port" "$hport"; then
    for path in rates flow; do
        t0=$(cpu_ticks "$SERVER_PID")
        n=$(wrk -t1 -c1 -d"${SECS}s" "http://127.0.0.1:$hport/api/$path" 2>&1 |
            awk '/requests in/ { print $1 }')
        t1=$(cpu_ticks "$SERVER_PID")
        if [ -n "$n" ] && [ "$n" -gt 0 ]; then
            per[$path]=$(( (t1 - t0) * TICK_NS / n / 1000 ))
        else
            per[$path]="?"
            failed=1
        fi
    done
    shape=$(curl -s "http://127.0.0.1:$hport/api/flow" |
        python3 -c 'import json,sys; f=json.load(sys.stdin); print("%d nodes, %d edges" % (len(f["nodes"]), len(f["edges"])))')
    stop_tide
else
    failed=1
fi

{
    m0=$(median_of "${rates[0]:-0}")
    mn=$(median_of "${rates[$CONSOLES]:-0}")
    echo "| open consoles | messages/s (median) | ratio | server CPU ns/event (median) |"
    echo "|---:|---:|---:|---:|"
    echo "| 0 | $m0 | 1.00 | $(median_of "${cpu[0]:-0}") |"
    echo "| $CONSOLES | $mn | $(awk -v a="$mn" -v b="$m0" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }') | $(median_of "${cpu[$CONSOLES]:-0}") |"
    echo
    echo "Rounds (messages/s): 0: $(echo ${rates[0]:-} | tr ' ' ','); $CONSOLES: $(echo ${rates[$CONSOLES]:-} | tr ' ' ',')"
    echo
    echo "Server CPU per answer: /api/rates ${per[rates]:-?} us, /api/flow ${per[flow]:-?} us (full.lua: 3 rules; ${shape:-?})."
    echo "Counted per event for the console: nothing (0 ns): the rates read counters the pipeline keeps anyway."
} | tee "$OUT"

if [ "$failed" -ne 0 ]; then
    echo "FAILED: some console benchmark runs did not complete (logs in $LOGS)"
    exit 1
fi
