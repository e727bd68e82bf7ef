#!/bin/bash
# TLS benchmark (run by `make bench`): publish throughput over TLS, tide
# against nats-server with the same certificate, and tide without TLS for
# reference; 1 publisher -> 1 subscriber (nats_bench pubsub, libnats with
# TLS), BENCH_TLS_SIZES payload sizes (default "128 1024"),
# BENCH_TLS_MSGS messages (default 500000), medians of BENCH_REPEAT
# (default 3) runs, the servers taken in turn.  Beside each rate, the
# server's CPU seconds for the run (from /proc): on a 2-core machine the
# client's own TLS work bounds the rate, and the CPU shows what the server
# spent for it.  Then the connect rate: BENCH_TLS_CONNS (default 1000)
# connections, BENCH_TLS_CONC (default 8) in flight at a time, each the
# INFO line, the TLS handshake, CONNECT, PING and its PONG, then close
# (bench/tls_connect.mjs, node: libnats' own TLS connect waits about 40 ms
# per connection on either server, which would hide both); connections/s,
# beside each the server's CPU seconds, medians as above.  Certificates are made
# with openssl in a temporary directory; loopback only; every run bounded
# (--timeout).
set -u
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROOT=$(pwd)
TIDE=${TIDE:-$ROOT/build/tide}
BENCH=$ROOT/build/nats_bench
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
REPEAT=${BENCH_REPEAT:-3}
MSGS=${BENCH_TLS_MSGS:-500000}
SIZES=${BENCH_TLS_SIZES:-128 1024}
CONNS=${BENCH_TLS_CONNS:-1000}
CONC=${BENCH_TLS_CONC:-8}
OUT=$ROOT/build/bench-tls.md
LOGS=$ROOT/build/bench-logs
mkdir -p "$LOGS"
[ -x "$BENCH" ] || { echo "bench-tls: $BENCH not built (make build/nats_bench)"; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tide-bench-tls.XXXXXX")
PID=
cleanup() { stop_pid "$PID"; rm -rf "$TMP"; }
trap cleanup EXIT

(cd "$TMP" &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-ca -keyout ca-key.pem -out ca.pem &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server-key.pem -out server.csr &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile san.ext \
        -out server.pem) >"$LOGS/tls-certs.log" 2>&1 || { echo "bench-tls: openssl failed"; exit 1; }
echo 'tls { cert = "server.pem", key = "server-key.pem" }' >"$TMP/tide.lua"

# start SIDE: starts the server for SIDE (tide-tls, nats-tls, tide-plain);
# sets PORT and PID.
start() {
    PORT=$(free_port)
    # Emptied here, not by the server's redirection: that happens in the
    # child, and the wait below could read the last run's "ready" line.
    : >"$LOGS/tls-$1.log"
    case $1 in
    tide-tls) "$TIDE" serve -c "$TMP/tide.lua" -a 127.0.0.1 -p "$PORT" --no-http >>"$LOGS/tls-$1.log" 2>&1 & ;;
    tide-plain) "$TIDE" serve -a 127.0.0.1 -p "$PORT" --no-http >>"$LOGS/tls-$1.log" 2>&1 & ;;
    nats-tls)
        printf 'listen: 127.0.0.1:%s\ntls { cert_file: "%s/server.pem", key_file: "%s/server-key.pem" }\n' \
            "$PORT" "$TMP" "$TMP" >"$TMP/nats.conf"
        "$NATS_BIN" -c "$TMP/nats.conf" >>"$LOGS/tls-$1.log" 2>&1 & ;;
    esac
    PID=$!
    # (A probe in the clear would only fill the TLS servers' logs with
    # handshake errors.)
    wait_log_ready "$LOGS/tls-$1.log" && return 0
    echo "bench-tls: $1 did not start"; exit 1
}

SIDES="tide-tls nats-tls tide-plain"
declare -A RATES CPUS
for size in $SIZES; do
    for r in $(seq 1 "$REPEAT"); do
        for side in $SIDES; do
            start "$side"
            tls=""
            [ "$side" != tide-plain ] && tls="--tls-ca $TMP/ca.pem"
            c0=$(cpu_ticks "$PID")
            line=$("$BENCH" pubsub --url "nats://127.0.0.1:$PORT" --size "$size" --msgs "$MSGS" --subs 1 \
                --timeout 120 $tls 2>&1)
            c1=$(cpu_ticks "$PID")
            rate=$(echo "$line" | sed -n 's/^RESULT.* rate=\([0-9]*\).*/\1/p')
            [ -n "$rate" ] || { echo "bench-tls: $side failed: $line"; exit 1; }
            RATES[$side.$size]="${RATES[$side.$size]:-} $rate"
            CPUS[$side.$size]="${CPUS[$side.$size]:-} $(ticks_to_s "$c0" "$c1")"
            stop_pid "$PID"; PID=
        done
        SIDES=$(echo "$SIDES" | awk '{print $2, $3, $1}') # a different one first next time
    done
done

for r in $(seq 1 "$REPEAT"); do
    for side in $SIDES; do
        start "$side"
        ca=$TMP/ca.pem
        [ "$side" = tide-plain ] && ca=-
        c0=$(cpu_ticks "$PID")
        line=$(timeout -k 5 $((CONNS / 10 + 90)) node bench/tls_connect.mjs "$PORT" "$ca" "$CONNS" "$CONC" 2>&1)
        c1=$(cpu_ticks "$PID")
        rate=$(echo "$line" | sed -n "s/^RESULT tls_connect n=$CONNS ok=$CONNS .* rate=\([0-9]*\).*/\1/p")
        [ -n "$rate" ] || { echo "bench-tls: $side connect failed: $line"; exit 1; }
        RATES[$side.connect]="${RATES[$side.connect]:-} $rate"
        CPUS[$side.connect]="${CPUS[$side.connect]:-} $(ticks_to_s "$c0" "$c1")"
        stop_pid "$PID"; PID=
    done
    SIDES=$(echo "$SIDES" | awk '{print $2, $3, $1}')
done

{
    echo "| TLS pub/sub, 1 -> 1 | tide TLS msg/s (server CPU s) | nats-server TLS msg/s (CPU s) | tide/nats | tide plain msg/s (CPU s) |"
    echo "|---|---:|---:|---:|---:|"
    for size in $SIZES; do
        m() { printf '%s\n' ${RATES[$1.$size]} | median; }
        c() { printf '%s\n' ${CPUS[$1.$size]} | median; }
        t=$(m tide-tls); n=$(m nats-tls); p=$(m tide-plain)
        printf '| %s B, %s msgs | %s (%s) | %s (%s) | %s | %s (%s) |\n' "$size" "$MSGS" "$t" "$(c tide-tls)" \
            "$n" "$(c nats-tls)" "$(awk -v a="$t" -v b="$n" 'BEGIN {printf "%.2f", b ? a / b : 0}')" "$p" "$(c tide-plain)"
    done
    echo
    echo "| TLS connect rate | tide TLS conn/s (server CPU s) | nats-server TLS conn/s (CPU s) | tide/nats | tide plain conn/s (CPU s) |"
    echo "|---|---:|---:|---:|---:|"
    m() { printf '%s\n' ${RATES[$1.connect]} | median; }
    c() { printf '%s\n' ${CPUS[$1.connect]} | median; }
    t=$(m tide-tls); n=$(m nats-tls); p=$(m tide-plain)
    printf '| %s connections, %s at a time (INFO, handshake, CONNECT, PING/PONG, close) | %s (%s) | %s (%s) | %s | %s (%s) |\n' \
        "$CONNS" "$CONC" "$t" "$(c tide-tls)" "$n" "$(c nats-tls)" "$(awk -v a="$t" -v b="$n" 'BEGIN {printf "%.2f", b ? a / b : 0}')" \
        "$p" "$(c tide-plain)"
    echo
    echo "Medians of $REPEAT runs; nats-server $("$NATS_BIN" --version 2>&1 | head -1); $(nproc) cores."
} | tee "$OUT"
