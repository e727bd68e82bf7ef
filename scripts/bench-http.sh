#!/bin/bash
# HTTP ingestion benchmark (run by `make bench`): wrk posting JSON events
# with keep-alive to tide's POST /v1/publish/<subject>, against publishing
# the same number of events over the NATS protocol (nats_bench, 1
# subscriber), in the same run; medians of BENCH_REPEAT (default 3).
# Loopback only; every run bounded (wrk -d, nats_bench --timeout).
set -u
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROOT=$(pwd)
TIDE=${TIDE:-$ROOT/build/tide}
BENCH=$ROOT/build/nats_bench
REPEAT=${BENCH_REPEAT:-3}
DUR=${BENCH_HTTP_SECONDS:-5}
OUT=$ROOT/build/bench-http.md
LOGS=$ROOT/build/bench-logs
mkdir -p "$LOGS"
command -v wrk >/dev/null || { echo "wrk is needed (make deps installs it)"; exit 1; }
http_rates=() nats_rates=()
for r in $(seq 1 "$REPEAT"); do
    np=$(free_port); hp=$(free_port)
    "$TIDE" serve -a 127.0.0.1 -p "$np" --http "127.0.0.1:$hp" >"$LOGS/http-bench.log" 2>&1 &
    pid=$!
    wait_ping "$np" 100 "$pid" || { echo "tide did not start (see $LOGS/http-bench.log)"; stop_pid "$pid"; exit 1; }
    # a subscriber, so both paths deliver what they take in
    "$ROOT/build/tide" sub 'bench.>' -s "127.0.0.1:$np" --json >/dev/null 2>&1 &
    subpid=$!
    sleep 0.3
    line=$(wrk -t1 -c16 -d"${DUR}s" -s "$ROOT/bench/http_post.lua" "http://127.0.0.1:$hp" 2>&1)
    rate=$(echo "$line" | awk '/Requests\/sec/ {print int($2)}')
    non2xx=$(echo "$line" | awk '/Non-2xx/ {print $NF}')
    [ -n "$non2xx" ] && { echo "wrk saw errors: $line"; kill $subpid $pid; exit 1; }
    http_rates+=("$rate")
    kill $subpid 2>/dev/null; wait $subpid 2>/dev/null
    nl=$("$BENCH" pubsub --url "nats://127.0.0.1:$np" --size 128 --msgs 300000 --subs 1 --json \
         --subject bench.nats --timeout 60 2>&1)
    nats_rates+=("$(echo "$nl" | sed -n 's/.* rate=\([0-9]*\).*/\1/p')")
    stop_pid "$pid"
done
h=$(printf '%s\n' "${http_rates[@]}" | median)
n=$(printf '%s\n' "${nats_rates[@]}" | median)
{
    echo "| ingestion | events/s (median of $REPEAT) | ratio to NATS |"
    echo "|---|---:|---:|"
    echo "| HTTP POST /v1/publish (wrk, 16 keep-alive connections, ${DUR}s) | $h | $(awk -v a="$h" -v b="$n" 'BEGIN{printf "%.2f", a/b}') |"
    echo "| NATS PUB (nats_bench, 1 publisher, 1 subscriber) | $n | 1.00 |"
} | tee "$OUT"
