#!/bin/bash
# The script-pipeline benchmark (run by `make bench` after scripts/bench.sh):
#
#  1. throughput of 1 publisher -> 1 subscriber, 200-byte CloudEvents
#     envelopes on order.created, through tide with
#       none     no scripts at all
#       bypass   a rule on another subject (these events match nothing)
#       subject  a filter reading only e.subject (no JSON decoding)
#       data     a filter reading e.data.amount (the payload is parsed)
#       full     upgrader (changes the event: re-encoded) + filter + route
#       shadow   data, with the same rules running beside it as a shadow
#                (tide rules shadow): every event runs twice, the decisions
#                match
#       canary   data, with the same rules as a canary for 10% of the events
#                (tide rules canary --percent 10, keyed by the event id)
#     alternating the configurations in one run, BENCH_REPEAT times (default
#     3); medians and the ratio to `none`, both as the ratio of the medians
#     and as the median of each round's ratio (a round runs every
#     configuration back to back, so it shares the machine's load of the
#     moment); and the server's own CPU time per event (user + system, from
#     /proc), which the load of other processes moves much less;
#  2. instructions per event from callgrind (repeatable, unlike seconds):
#     BENCH_CG_MSGS events (default 20000) minus a run with none;
#     then shadow and canary against data (the same rules alone): events/s,
#     CPU and instructions per event, failing the run when the shadow's
#     instructions per event pass twice data's (the bound of the issue);
#  3. reload latency: a rules file rewritten BENCH_RELOADS times (default
#     50), from the write to the new version routing events.
#
# BENCH_SCRIPT_CONFIGS runs a subset (keep none, and data for the ratios).
# Results also go to build/bench-scripts.md.  Loopback only; every run is
# bounded (nats_bench --timeout).
set -u
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROOT=$(pwd)
TIDE=${TIDE:-$ROOT/build/tide}
BENCH=$ROOT/build/nats_bench
REPEAT=${BENCH_REPEAT:-3}
MSGS=${BENCH_SCRIPT_MSGS:-300000}
CG_MSGS=${BENCH_CG_MSGS:-20000}
RELOADS=${BENCH_RELOADS:-50}
OUT=$ROOT/build/bench-scripts.md
LOGS=$ROOT/build/bench-logs
mkdir -p "$LOGS"
CONFIGS=${BENCH_SCRIPT_CONFIGS:-none bypass subject data full shadow canary}
failed=0
SERVER_PID=

cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; }
trap cleanup EXIT

start_tide() { # cfg port [wrapper...]
    local cfg=$1 port=$2
    shift 2
    local args=(serve -a 127.0.0.1 -p "$port" --no-http)
    local rules=$cfg
    [ "$cfg" = shadow ] || [ "$cfg" = canary ] && rules=data
    [ "$cfg" != none ] && args+=(-c "$ROOT/bench/scripts/$rules.lua")
    "$@" "$TIDE" "${args[@]}" >"$LOGS/scripts-$cfg.log" 2>&1 &
    SERVER_PID=$!
    if wait_ping "$port" 300 "$SERVER_PID"; then
        case $cfg in
        shadow) "$TIDE" rules shadow "$ROOT/bench/scripts/data.lua" -s "127.0.0.1:$port" --timeout 60 ;;
        canary) "$TIDE" rules canary "$ROOT/bench/scripts/data.lua" --percent 10 -s "127.0.0.1:$port" --timeout 60 ;;
        esac >/dev/null && return 0
    fi
    echo "tide ($cfg) did not start" >&2
    return 1
}

stop_tide() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

TICK_NS=$((1000000000 / $(getconf CLK_TCK)))

echo "== script pipeline: throughput, $MSGS messages of 200 B, median of $REPEAT"
declare -A rates cpu round_ratios
for r in $(seq 1 "$REPEAT"); do
    none_rate=
    for cfg in $CONFIGS; do
        port=$(free_port)
        start_tide "$cfg" "$port" || { failed=1; continue; }
        t0=$(cpu_ticks "$SERVER_PID")
        line=$("$BENCH" pubsub --url "nats://127.0.0.1:$port" --size 200 --msgs "$MSGS" --subs 1 \
               --json --subject order.created --timeout 120 2>&1)
        t1=$(cpu_ticks "$SERVER_PID")
        stop_tide
        rate=$(echo "$line" | sed -n 's/.* rate=\([0-9]*\).*/\1/p')
        if [ -z "$rate" ]; then
            echo "   $cfg: $line"
            failed=1
            continue
        fi
        rates[$cfg]="${rates[$cfg]:-} $rate"
        cpu[$cfg]="${cpu[$cfg]:-} $(( (t1 - t0) * TICK_NS / MSGS ))"
        [ "$cfg" = none ] && none_rate=$rate
        [ -n "$none_rate" ] && round_ratios[$cfg]="${round_ratios[$cfg]:-} $(awk -v a="$rate" -v b="$none_rate" 'BEGIN { printf "%.3f", a / b }')"
    done
done

echo "== script pipeline: instructions per event (callgrind, $CG_MSGS events)"
declare -A instr
cg_total() { # cfg msgs
    local cfg=$1 n=$2 port out
    port=$(free_port)
    out=$LOGS/callgrind-$cfg-$n.out
    rm -f "$out"
    start_tide "$cfg" "$port" valgrind --tool=callgrind --callgrind-out-file="$out" || return 1
    if [ "$n" -gt 0 ]; then
        "$BENCH" pubsub --url "nats://127.0.0.1:$port" --size 200 --msgs "$n" --subs 1 \
            --json --subject order.created --timeout 300 >/dev/null 2>&1 || return 1
    fi
    stop_tide
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
if command -v valgrind >/dev/null; then
    base0=$(cg_total none 0)
    for cfg in $CONFIGS; do
        t=$(cg_total "$cfg" "$CG_MSGS")
        # The same start-up and shutdown with no events, per configuration.
        b=$(cg_total "$cfg" 0)
        if [ -n "$t" ] && [ -n "$b" ]; then
            instr[$cfg]=$(( (t - b) / CG_MSGS ))
        else
            instr[$cfg]="?"
            failed=1
        fi
    done
    : "${base0:=0}"
fi

echo "== reload latency ($RELOADS reloads)"
reload_line=$(lua5.4 "$ROOT/bench/reload_latency.lua" "$TIDE" "$RELOADS" 2>&1 | grep '^RESULT' || true)
[ -z "$reload_line" ] && failed=1

none_med=$(echo ${rates[none]:-0} | tr ' ' '\n' | median)
{
    none_cpu=$(median_of "${cpu[none]:-0}")
    echo "| configuration | messages/s (median) | ratio of medians | median of round ratios | server CPU ns/event (median) | CPU ratio | instructions/event (callgrind) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for cfg in $CONFIGS; do
        med=$(median_of "${rates[$cfg]:-0}")
        ratio=$(awk -v a="$med" -v b="$none_med" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        rr=$(median_of "${round_ratios[$cfg]:-0}")
        c=$(median_of "${cpu[$cfg]:-0}")
        cr=$(awk -v a="$c" -v b="$none_cpu" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }')
        echo "| $cfg | $med | $ratio | $(printf '%.2f' "$rr") | $c | $cr | ${instr[$cfg]:-n/a} |"
    done
    echo
    echo "Rounds (messages/s): $(for cfg in $CONFIGS; do printf '%s:%s; ' "$cfg" "$(echo ${rates[$cfg]:-} | tr ' ' ',')"; done)"
    echo
    # The shadow's and the canary's cost against the same rules alone
    # (data): the shadow must stay within 2x the CPU per event.
    data_cpu=$(median_of "${cpu[data]:-0}")
    data_rate=$(median_of "${rates[data]:-0}")
    for cfg in shadow canary; do
        awk -v cfg="$cfg" -v r="$(median_of "${rates[$cfg]:-0}")" -v dr="$data_rate" \
            -v c="$(median_of "${cpu[$cfg]:-0}")" -v dc="$data_cpu" -v i="${instr[$cfg]:-0}" -v di="${instr[data]:-0}" \
            'BEGIN { er = (dr > 0) ? r / dr : 0; cr = (dc > 0) ? c / dc : 0
                     ir = (di > 0 && i > 0) ? sprintf("%.2f", i / di) : "n/a"
                     printf "%s against data (the same rules alone): events/s %.2fx, server CPU per event %.2fx, instructions per event %sx\n", cfg, er, cr, ir }'
    done
    echo
    echo "Reload latency: ${reload_line:-FAILED}"
} | tee "$OUT"

# The issue's bound: a shadow costs at most 2x the CPU per event of the
# live rules alone.  Instructions are the repeatable measure of it.
if [ "${instr[shadow]:-?}" != "?" ] && [ "${instr[data]:-?}" != "?" ] && [ -n "${instr[data]:-}" ] &&
   [ "${instr[data]}" -gt 0 ] && [ $((instr[shadow] * 100)) -gt $((instr[data] * 200)) ]; then
    echo "FAILED: the shadow costs ${instr[shadow]} instructions per event, more than twice data's ${instr[data]}"
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    echo "FAILED: some script benchmark runs did not complete (logs in $LOGS)"
    exit 1
fi
