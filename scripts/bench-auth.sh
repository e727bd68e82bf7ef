#!/bin/bash
# Auth benchmark (run by `make bench`): the cost of users and permissions,
# tide against nats-server with the same configuration, each beside itself
# without auth.
#
#   pubsub   1 publisher -> 1 subscriber, 128 B, BENCH_AUTH_MSGS messages
#            (default 500000), as user "bench" whose publish and subscribe
#            permissions are allow lists of three patterns and a deny
#            (every publish is checked: tide keeps the decision per subject)
#   connect  BENCH_AUTH_CONNS (default 2000) libnats connections one after
#            the other, each closed before the next: a plain-text password,
#            and BENCH_AUTH_BCRYPT_CONNS (default 20) with a bcrypt hash of
#            cost 11 (the login pays one bcrypt check on either server)
#
# Medians of BENCH_REPEAT (default 3) runs, the servers taken in turn; beside
# each pubsub rate, the server's CPU seconds for the run (from /proc).
# Loopback only; every run bounded (--timeout).  Output: the table on stdout
# and in build/bench-auth.md.
set -u
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROOT=$(pwd)
TIDE=${TIDE:-$ROOT/build/tide}
BENCH=$ROOT/build/nats_bench
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
REPEAT=${BENCH_REPEAT:-3}
MSGS=${BENCH_AUTH_MSGS:-500000}
CONNS=${BENCH_AUTH_CONNS:-2000}
BCONNS=${BENCH_AUTH_BCRYPT_CONNS:-20}
OUT=$ROOT/build/bench-auth.md
LOGS=$ROOT/build/bench-logs
mkdir -p "$LOGS"
[ -x "$BENCH" ] || { echo "bench-auth: $BENCH not built (make build/nats_bench)"; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tide-bench-auth.XXXXXX")
PID=
cleanup() { stop_pid "$PID"; rm -rf "$TMP"; }
trap cleanup EXIT

HASH=$(printf 'slowpw\n' | "$TIDE" passwd --cost 11 | tail -1)
case $HASH in '$2'*) ;; *) echo "bench-auth: tide passwd failed"; exit 1 ;; esac
cat >"$TMP/tide.lua" <<LUA
auth { users = {
  { user = "bench", password = "benchpw", permissions = {
      publish = { allow = { "bench.>", "orders.>", "_INBOX.>" }, deny = { "bench.secret.>" } },
      subscribe = { allow = { "bench.>", "orders.>", "_INBOX.>" }, deny = { "bench.secret.>" } } } },
  { user = "slow", password = "$HASH" },
} }
LUA
cat >"$TMP/nats-auth.conf" <<CONF
authorization { users = [
  { user: bench, password: benchpw, permissions: {
      publish: { allow: ["bench.>", "orders.>", "_INBOX.>"], deny: ["bench.secret.>"] },
      subscribe: { allow: ["bench.>", "orders.>", "_INBOX.>"], deny: ["bench.secret.>"] } } }
  { user: slow, password: "$HASH" }
] }
CONF
: >"$TMP/nats-none.conf"

# start SIDE: tide-none, tide-auth, nats-none or nats-auth; sets PORT and PID.
start() {
    PORT=$(free_port)
    : >"$LOGS/auth-$1.log" # emptied here: the child truncates it later than the first grep may run
    case $1 in
    tide-none) "$TIDE" serve -a 127.0.0.1 -p "$PORT" --no-http >"$LOGS/auth-$1.log" 2>&1 & ;;
    tide-auth) "$TIDE" serve -c "$TMP/tide.lua" -a 127.0.0.1 -p "$PORT" --no-http >"$LOGS/auth-$1.log" 2>&1 & ;;
    nats-*) "$NATS_BIN" -a 127.0.0.1 -p "$PORT" -c "$TMP/$1.conf" >"$LOGS/auth-$1.log" 2>&1 & ;;
    esac
    PID=$!
    wait_log_ready "$LOGS/auth-$1.log" && return 0
    echo "bench-auth: $1 did not start"; exit 1
}

# run SIDE WHAT: one run of WHAT (pubsub, connect, bcrypt) against SIDE.
declare -A VAL CPUS
run() {
    local side=$1 what=$2 url line c0 c1 v
    start "$side"
    url="nats://127.0.0.1:$PORT"
    case $side in *-auth) [ "$what" = bcrypt ] && url="nats://slow:slowpw@127.0.0.1:$PORT" ||
        url="nats://bench:benchpw@127.0.0.1:$PORT" ;; esac
    c0=$(cpu_ticks "$PID")
    case $what in
    pubsub) line=$("$BENCH" pubsub --url "$url" --size 128 --msgs "$MSGS" --subs 1 --timeout 120 2>&1) ;;
    connect) line=$("$BENCH" connect --url "$url" --n "$CONNS" 2>&1) ;;
    bcrypt) line=$("$BENCH" connect --url "$url" --n "$BCONNS" 2>&1) ;;
    esac
    c1=$(cpu_ticks "$PID")
    v=$(echo "$line" | sed -n 's/^RESULT.* rate=\([0-9]*\).*/\1/p')
    [ -n "$v" ] || { echo "bench-auth: $side $what failed: $line"; exit 1; }
    VAL[$side.$what]="${VAL[$side.$what]:-} $v"
    CPUS[$side.$what]="${CPUS[$side.$what]:-} $(ticks_to_s "$c0" "$c1")"
    stop_pid "$PID"; PID=
}

SIDES="tide-none tide-auth nats-none nats-auth"
for r in $(seq 1 "$REPEAT"); do
    for side in $SIDES; do run "$side" pubsub; run "$side" connect; done
    for side in tide-auth nats-auth; do run "$side" bcrypt; done
    SIDES=$(echo "$SIDES" | awk '{print $2, $3, $4, $1}') # a different one first next time
done

m() { printf '%s\n' ${VAL[$1]} | median; }
c() { printf '%s\n' ${CPUS[$1]} | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b ? a / b : 0}'; }
{
    echo "| auth | tide | nats-server | tide/nats | tide auth / tide none | nats auth / nats none |"
    echo "|---|---:|---:|---:|---:|---:|"
    for w in pubsub connect; do
        case $w in pubsub) what="pub/sub 1 -> 1, 128 B, $MSGS msgs (msg/s, server CPU s)" ;;
                   connect) what="connect + close, one at a time, $CONNS (conn/s)" ;; esac
        tn=$(m tide-none.$w); ta=$(m tide-auth.$w); nn=$(m nats-none.$w); na=$(m nats-auth.$w)
        if [ $w = pubsub ]; then
            printf '| %s, no auth | %s (%s) | %s (%s) | %s | | |\n' "$what" "$tn" "$(c tide-none.$w)" "$nn" \
                "$(c nats-none.$w)" "$(ratio "$tn" "$nn")"
            printf '| %s, user + permissions | %s (%s) | %s (%s) | %s | %s | %s |\n' "$what" "$ta" \
                "$(c tide-auth.$w)" "$na" "$(c nats-auth.$w)" "$(ratio "$ta" "$na")" "$(ratio "$ta" "$tn")" \
                "$(ratio "$na" "$nn")"
        else
            printf '| %s, no auth | %s | %s | %s | | |\n' "$what" "$tn" "$nn" "$(ratio "$tn" "$nn")"
            printf '| %s, plain password | %s | %s | %s | %s | %s |\n' "$what" "$ta" "$na" "$(ratio "$ta" "$na")" \
                "$(ratio "$ta" "$tn")" "$(ratio "$na" "$nn")"
        fi
    done
    tb=$(m tide-auth.bcrypt); nb=$(m nats-auth.bcrypt)
    printf '| connect + close, one at a time, %s, bcrypt cost 11 (conn/s) | %s | %s | %s | | |\n' "$BCONNS" "$tb" \
        "$nb" "$(ratio "$tb" "$nb")"
    echo
    echo "Medians of $REPEAT runs; nats-server $("$NATS_BIN" --version 2>&1 | head -1); $(nproc) cores."
} | tee "$OUT"
