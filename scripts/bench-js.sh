#!/usr/bin/env bash
# Side-by-side durable-publish benchmark: tide streams against nats-server
# JetStream file storage (the last step of `make bench`, which builds
# build/tide and build/js_bench first).
#
# Both servers listen on free loopback ports (127.0.0.1 only).  Every
# scenario is run against both servers alternately (the order flips on every
# repetition), R times; the table shows medians and the ratio tide/nats.
# Every single run starts its server fresh on an empty data directory under a
# temporary directory, so runs do not see each other's messages or store
# size (the consumer in particular delivers exactly what its run stored).
#
# Durability is not the same on both sides, and the table says so:
#   tide         stream "bench" with fsync = "always": the PubAck is sent once
#                the message is fdatasync'd (group commit: one fdatasync
#                covers every message that arrived meanwhile);
#   nats-server  2.9 JetStream file storage acks once the message is written
#                to the block file, before any fsync (the file store syncs
#                every 2 minutes; 2.9 has no setting to sync on every write).
#
# Names, the same on both sides (docs in bench/js_bench.c):
#   stream "bench", subjects { "bench.s" }, file storage; publish to bench.s
#   durable push consumer "w", deliver subject "deliver.bench" (outside the
#   stream's subjects), ack explicit, ack wait 30 s, max ack pending 20000
# tide declares them in $TMP/tide-js.lua (written below); for nats-server
# js_bench creates them through $JS.API (--create-stream --create-consumer).
#
# Scenarios (ids for BENCH_ONLY), all through build/js_bench:
#   seq          BENCH_JS_SEQ_N (default 5000) sequential js_Publish calls,
#                128 B, each waiting for its PubAck (after 100 untimed);
#                latency p50 / p99 / p99.9 / mean in microseconds
#   seqi         the same, with tide's stream on fsync = "interval" (acked
#                once written, synced every second: what JetStream 2.9
#                promises); nats-server runs as in seq
#   async        BENCH_JS_ASYNC_N (default 200000) js_PublishAsync, 128 B,
#                at most BENCH_JS_MAX_PENDING (default 4096) unacknowledged;
#                PubAcks/s (0 errors required); data directory size after
#   consume      BENCH_JS_CONSUME_N (default 100000) messages preloaded with
#                async publishes, then a plain subscription on the deliver
#                subject receives and acks them ("+ACK" to the reply subject);
#                messages/s delivered and acked
#   pull1, pull100, pull1000
#                BENCH_JS_PULL_N (default 100000; pull1: BENCH_JS_PULL1_N,
#                default 5000) messages preloaded with async publishes, then
#                a durable pull consumer made through $JS.API on both servers
#                (js_AddConsumer) is fetched from with natsSubscription_Fetch
#                of 1, 100 or 1000 messages at a time, each message acked
#                (natsMsg_Ack); messages/s fetched and acked
#   recovery128  BENCH_RECOVERY_N (default 1000000) events of 128 B published
#                async, the server stopped with SIGTERM and started again on
#                the same data: time from exec until it accepts a connection
#                and answers PING, VmRSS of the restarted server (1 s after
#                it answered) and its VmHWM; then one js_Publish must get
#                sequence N+1 (everything was recovered)
#   recovery1k   the same with 1 KiB payloads (same count: RSS after recovery
#                should not grow with payload bytes)
#   recoverykill the same as recovery1k, the server killed with SIGKILL
#                (once every PubAck came back) instead of stopped
#   recovery     the three recovery runs
#   kv           a KV bucket "bench" (history 1) made with js_CreateKeyValue on
#                both servers (tide: through its JetStream API, a stream with
#                fsync "always"), then BENCH_JS_KV_N (default 5000)
#                sequential kvStore_Put of 128 B over 1,000 keys, each waiting
#                for its PubAck, then as many kvStore_Get (direct gets);
#                puts/s, gets/s and the p50 of each
#   kvi          the same, with tide's bucket stream on fsync "interval"
#                (metadata.tide_fsync: acked once written, synced every
#                second), the promise nats-server's PubAck makes
#
# Environment:
#   BENCH_REPEAT         repetitions per scenario and server (default 3)
#   BENCH_JS_SEQ_N, BENCH_JS_ASYNC_N, BENCH_JS_CONSUME_N, BENCH_RECOVERY_N, BENCH_JS_KV_N,
#   BENCH_JS_MAX_PENDING as above
#   BENCH_JS_TIMEOUT     deadline of one js_bench run in seconds (default 600);
#                        a run past it fails
#   BENCH_ONLY           space-separated subset of the scenario ids above
#   NATS_SERVER_BIN      nats-server binary (default: nats-server on PATH)
#   TIDE_JS_OVERRIDE=nats  run nats-server (with its own data directory) in
#                        the tide column too: checks the runner and shows the
#                        noise floor of the machine (ratios near 1)
#   TMPDIR               where the data directories go (default /tmp).  It
#                        must be on the disk under test: on tmpfs fdatasync
#                        costs nothing.  The file system type is printed.
#   BUILD                build directory (default build)
#
# The tide binary is copied to the temporary directory and run from there, so
# a rebuild of build/tide during the run cannot mix two versions in a table.
#
# Output: the table on stdout, the same in markdown in
# $BUILD/bench-js-results.md, raw samples in $BUILD/bench-js-logs/samples.tsv,
# server and client logs in $BUILD/bench-js-logs/.  Exits non-zero if any
# scenario failed for either server (error line, missing or failed PubAck,
# missing delivery, lost messages after restart, crash, timeout).
set -u

cd "$(dirname "$0")/.." || exit 2
. scripts/bench-lib.sh

BUILD=${BUILD:-build}
BENCH=$BUILD/js_bench
REPEAT=${BENCH_REPEAT:-3}
SEQ_N=${BENCH_JS_SEQ_N:-5000}
ASYNC_N=${BENCH_JS_ASYNC_N:-200000}
CONSUME_N=${BENCH_JS_CONSUME_N:-100000}
KV_N=${BENCH_JS_KV_N:-5000}
PULL_N=${BENCH_JS_PULL_N:-100000}
PULL1_N=${BENCH_JS_PULL1_N:-5000}
REC_N=${BENCH_RECOVERY_N:-1000000}
MAX_PENDING=${BENCH_JS_MAX_PENDING:-4096}
JS_TMO=${BENCH_JS_TIMEOUT:-600}
ONLY=${BENCH_ONLY:-}
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
OVERRIDE=${TIDE_JS_OVERRIDE:-}
LOGDIR=$BUILD/bench-js-logs
SAMPLES=$LOGDIR/samples.tsv
MD=$BUILD/bench-js-results.md
SIDES="tide nats"
READY_TMO=120      # seconds a (re)started server gets to answer PING
STOP_TMO=60        # seconds a server gets to exit after SIGTERM

die() { echo "bench-js: $*" >&2; exit 2; }

[ -x "$BENCH" ] || die "$BENCH not built (run: make build/js_bench)"
[ -x "$BUILD/fsync_probe" ] || die "$BUILD/fsync_probe not built (run: make build/fsync_probe)"
command -v "$NATS_BIN" >/dev/null 2>&1 || die "$NATS_BIN not found"
case "$REPEAT$SEQ_N$ASYNC_N$CONSUME_N$PULL_N$PULL1_N$REC_N$MAX_PENDING$JS_TMO$KV_N" in
    *[!0-9]*) die "BENCH_* values must be integers" ;;
esac
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be >= 1"
for v in "$SEQ_N" "$ASYNC_N" "$CONSUME_N" "$REC_N" "$MAX_PENDING" "$JS_TMO" "$KV_N"; do
    [ "$v" -ge 1 ] || die "BENCH_JS_* and BENCH_RECOVERY_N must be >= 1"
done

declare -A KIND PID PORT DATA START_NS
KIND[nats]=nats
case "$OVERRIDE" in
    "") KIND[tide]=tide
        [ -x "$BUILD/tide" ] || die "$BUILD/tide not built (run: make)" ;;
    nats|nats-server) KIND[tide]=nats ;;
    *) die "TIDE_JS_OVERRIDE: only 'nats' is supported" ;;
esac

mkdir -p "$LOGDIR"
: > "$SAMPLES"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tide-bench-js.XXXXXX") || die "mktemp failed"
TMP=$(cd "$TMP" && pwd -P) || die "cannot resolve $TMP"
DATA[tide]=$TMP/tide-data
DATA[nats]=$TMP/nats-data
TIDE_SHOWN="$BUILD/tide serve --no-http -c tide-js.lua"
TIDE_ID=""
if [ "${KIND[tide]}" = tide ]; then
    # Run a snapshot, so that a rebuild during the run cannot mix versions.
    cp "$BUILD/tide" "$TMP/tide" || die "cannot copy $BUILD/tide"
    TIDE_ID="binary sha256 $(sha256sum "$TMP/tide" | cut -c1-12), "
else
    TIDE_SHOWN="nats-server (TIDE_JS_OVERRIDE=nats: both columns are nats-server)"
fi
cat > "$TMP/tide-js.lua" <<EOF
storage { dir = "$TMP/tide-data" }
stream "bench" { subjects = { "bench.s" }, fsync = "always" }
consumer "w" { stream = "bench", deliver = "deliver.bench", ack_wait = "30s", max_ack_pending = 20000 }
EOF
# The seqi scenario: the promise JetStream 2.9 makes (acked once written,
# synced on a timer), for a like-for-like sequential latency.
sed 's/fsync = "always"/fsync = "interval", sync_interval = "1s"/' "$TMP/tide-js.lua" > "$TMP/tide-js-interval.lua"
TIDE_CFG="$TMP/tide-js.lua"
FAILED=0
WAITER=""

cleanup() {
    [ -n "$WAITER" ] && kill "$WAITER" 2>/dev/null
    for s in $SIDES; do stop_server "$s" >/dev/null 2>&1; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "bench-js: interrupted" >&2; exit 130' INT TERM

want() {
    [ -z "$ONLY" ] && return 0
    case " $ONLY " in *" $1 "*) return 0 ;; esac
    case "$1" in recovery*) case " $ONLY " in *" recovery "*) return 0 ;; esac ;; esac
    return 1
}

# Flags js_bench needs for a server: nats-server gets the stream and the
# consumer through $JS.API, tide has them in its entry file (and answers
# consumer-state questions on $TIDE.ADMIN.CONSUMER.INFO instead).
js_flags() {
    case "${KIND[$1]}" in
        nats) echo "--create-stream --create-consumer" ;;
        tide) echo "--tide-admin" ;;
    esac
}

# start_server SIDE [keep]: a new server on a new port; without "keep" its
# data directory is emptied first.  Waits until it answers PING and sets
# READY_MS (exec to PONG).  Returns 1 (with the log tail shown) on failure.
start_server() {
    local side=$1 keep=${2:-} port
    [ -n "$keep" ] || rm -rf "${DATA[$side]}"
    mkdir -p "${DATA[$side]}"
    port=$(free_port)
    PORT[$side]=$port
    echo "--- $(date +%T) start on port $port${keep:+ (same data)}" >> "$LOGDIR/$side.log"
    START_NS[$side]=$(date +%s%N)
    case "${KIND[$side]}" in
        nats) "$NATS_BIN" -js -sd "${DATA[$side]}" -a 127.0.0.1 -p "$port" \
                  >>"$LOGDIR/$side.log" 2>&1 & ;;
        tide) "$TMP/tide" serve --no-http -c "$TIDE_CFG" -a 127.0.0.1 -p "$port" \
                  >>"$LOGDIR/$side.log" 2>&1 & ;;
    esac
    PID[$side]=$!
    wait_ready "$side" && return 0
    echo "bench-js: $(label "$side") did not come up on port $port (see $LOGDIR/$side.log)" >&2
    tail -n 5 "$LOGDIR/$side.log" | sed 's/^/     /' >&2
    stop_server "$side"
    return 1
}

# Runs js_bench wait-ready in the background while watching the server, so
# a server that exits is noticed at once.  Sets READY_MS.
wait_ready() {
    local side=$1 rc line
    local out=$TMP/ready.$side
    READY_MS=""
    "$BENCH" wait-ready --url "nats://127.0.0.1:${PORT[$side]}" \
        --since-ns "${START_NS[$side]}" --timeout "$READY_TMO" \
        > "$out" 2>>"$LOGDIR/client.log" &
    WAITER=$!
    for _ in $(seq 1 $(( READY_TMO * 20 + 200 ))); do
        kill -0 "$WAITER" 2>/dev/null || break
        alive "$side" || break
        sleep 0.05
    done
    kill "$WAITER" 2>/dev/null
    wait "$WAITER"; rc=$?
    WAITER=""
    line=$(grep -m1 '^RESULT ' "$out")
    [ $rc -eq 0 ] && [ -n "$line" ] && alive "$side" || return 1
    READY_MS=$(field ready_ms "$line")
    return 0
}

# stop_server SIDE: SIGTERM, up to STOP_TMO seconds, then SIGKILL.  Sets
# STOP_MS and STOP_RC; returns 1 if the server had to be killed.
stop_server() {
    local side=$1 pid=${PID[$1]:-} t0 killed=0
    STOP_MS=""; STOP_RC=""
    [ -n "$pid" ] || return 0
    t0=$(now_ms)
    stop_pid "$pid" "$STOP_TMO" || killed=1
    STOP_MS=$(( $(now_ms) - t0 ))
    echo "--- $(date +%T) stopped: status $STOP_RC after ${STOP_MS} ms$([ $killed = 1 ] && echo ', SIGKILL')" \
        >> "$LOGDIR/$side.log"
    PID[$side]=""
    [ $killed = 0 ]
}

# js_client SIDE KEY SCENARIO ARGS...: run_client with js_bench's
# timeout and the flags SIDE's server needs.
js_client() {
    local side=$1 key=$2 sc=$3
    shift 3
    # shellcheck disable=SC2046  # js_flags is a word list
    run_client "$side" "$key" $(( JS_TMO + 60 )) "$sc" --timeout "$JS_TMO" $(js_flags "$side") "$@"
}

fresh_server() {   # side key
    start_server "$1" && return 0
    record_error "$2" "$1" "$(label "$1") did not start"
    return 1
}

# ------------------------------------------------------------ scenarios

scen_seq() {
    local side=$1 key=${2:-seq}
    fresh_server "$side" "$key" || return
    if js_client "$side" "$key" seq --n "$SEQ_N" --size 128 --warmup 100; then
        sample "$key.p50" "$side" "$(field p50_us "$LINE")"
        sample "$key.p99" "$side" "$(field p99_us "$LINE")"
        sample "$key.p999" "$side" "$(field p999_us "$LINE")"
        sample "$key.mean" "$side" "$(field mean_us "$LINE")"
        sample "$key.cpu" "$side" "$CPU_S"
        printf '  %-11s %-12s p50 %s us  p99 %s us  p99.9 %s us  mean %s us\n' "$(label "$side")" "$key" \
            "$(field p50_us "$LINE")" "$(field p99_us "$LINE")" "$(field p999_us "$LINE")" "$(field mean_us "$LINE")"
    fi
    stop_server "$side"
}

scen_async() {
    local side=$1 key=async disk
    fresh_server "$side" "$key" || return
    if js_client "$side" "$key" async --n "$ASYNC_N" --size 128 --max-pending "$MAX_PENDING"; then
        disk=$(du -sk "${DATA[$side]}" | cut -f1)
        sample "$key" "$side" "$(field rate "$LINE")"
        sample "$key.disk" "$side" "$disk"
        sample "$key.cpu" "$side" "$CPU_S"
        printf '  %-11s %-12s %10s msg/s  (data dir %s KiB)\n' "$(label "$side")" "$key" \
            "$(field rate "$LINE")" "$disk"
    fi
    stop_server "$side"
}

scen_consume() {
    local side=$1 key=consume
    fresh_server "$side" "$key" || return
    if js_client "$side" "$key" consume --n "$CONSUME_N" --size 128 --max-pending "$MAX_PENDING"; then
        if [ "$(field redelivered "$LINE")" != 0 ]; then
            note_error "$key" "$side" "$(field redelivered "$LINE") redeliveries (not counted in the rate)"
        fi
        sample "$key" "$side" "$(field rate "$LINE")"
        sample "$key.pre" "$side" "$(field preload_rate "$LINE")"
        sample "$key.cpu" "$side" "$CPU_S"
        printf '  %-11s %-12s %10s msg/s delivered+acked (preload %s msg/s)\n' "$(label "$side")" "$key" \
            "$(field rate "$LINE")" "$(field preload_rate "$LINE")"
    fi
    stop_server "$side"
}

# kill_server SIDE: SIGKILL at once (a crash); sets STOP_MS and STOP_RC.
scen_kv() {
    local side=$1 key=${2:-kv} extra=()
    # kvi: tide's bucket stream on fsync "interval" (acked once written,
    # synced every second), the policy nats-server's PubAck follows.
    [ "$key" = kvi ] && [ "${KIND[$side]}" = tide ] && extra=(--kv-fsync interval)
    fresh_server "$side" "$key" || return
    if js_client "$side" "$key" kv --n "$KV_N" --size 128 "${extra[@]}"; then
        sample "$key.put" "$side" "$(field put_rate "$LINE")"
        sample "$key.putp50" "$side" "$(field put_p50_us "$LINE")"
        sample "$key.get" "$side" "$(field get_rate "$LINE")"
        sample "$key.getp50" "$side" "$(field get_p50_us "$LINE")"
        sample "$key.cpu" "$side" "$CPU_S"
        printf '  %-11s %-12s put %s/s (p50 %s us)  get %s/s (p50 %s us)\n' "$(label "$side")" "$key" \
            "$(field put_rate "$LINE")" "$(field put_p50_us "$LINE")" "$(field get_rate "$LINE")" \
            "$(field get_p50_us "$LINE")"
    fi
    stop_server "$side"
}

kill_server() {
    local side=$1 pid=${PID[$1]:-} t0
    STOP_MS=""; STOP_RC=""
    [ -n "$pid" ] || return 0
    t0=$(now_ms)
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null; STOP_RC=$?
    STOP_MS=$(( $(now_ms) - t0 ))
    echo "--- $(date +%T) killed (SIGKILL): status $STOP_RC" >> "$LOGDIR/$side.log"
    PID[$side]=""
    return 0
}

scen_pull() {   # side batch n
    local side=$1 batch=$2 n=$3 key=pull$2
    fresh_server "$side" "$key" || return
    # (the pull consumer "p" is made through $JS.API on both servers)
    if js_client "$side" "$key" pull --n "$n" --size 128 --batch "$batch" --max-pending "$MAX_PENDING"; then
        sample "$key" "$side" "$(field rate "$LINE")"
        sample "$key.cpu" "$side" "$CPU_S"
        printf '  %-11s %-12s %10s msg/s fetched+acked (%s fetches)\n' "$(label "$side")" "$key" \
            "$(field rate "$LINE")" "$(field fetches "$LINE")"
    fi
    stop_server "$side"
}

scen_recovery() {   # side key size [kill]
    local side=$1 key=$2 size=$3 how=${4:-term} disk rate pub_cpu stop_ms ready rss hwm c_ready seq out
    fresh_server "$side" "$key" || return
    if ! js_client "$side" "$key" async --n "$REC_N" --size "$size" --max-pending "$MAX_PENDING"; then
        stop_server "$side"; return
    fi
    rate=$(field rate "$LINE"); pub_cpu=$CPU_S
    if [ "$how" = kill ]; then
        kill_server "$side"
        STOP_RC=0
    elif ! stop_server "$side"; then
        record_error "$key" "$side" "did not exit within ${STOP_TMO}s of SIGTERM (killed)"
        return
    fi
    stop_ms=$STOP_MS
    # tide exits 0 after SIGTERM; nats-server 2.9 exits 1 after a clean
    # shutdown ("Server Exiting.." in its log).
    case "${KIND[$side]}:$STOP_RC" in
        tide:0|nats:0|nats:1) ;;
        *) note_error "$key" "$side" "exited with status $STOP_RC on SIGTERM (see $LOGDIR/$side.log)" ;;
    esac
    disk=$(du -sk "${DATA[$side]}" | cut -f1)
    if ! start_server "$side" keep; then
        record_error "$key" "$side" "did not restart on its data (see $LOGDIR/$side.log)"
        return
    fi
    ready=$READY_MS
    c_ready=$(cpu_ticks "${PID[$side]}")
    sleep 1
    rss=$(rss_kb "${PID[$side]}"); hwm=$(hwm_kb "${PID[$side]}")
    # Everything must be there: the next publish gets sequence N+1.  (No
    # --create-* flags: the stream and the consumer must have survived.)
    if ! out=$(timeout -k 5 120 "$BENCH" seq --url "nats://127.0.0.1:${PORT[$side]}" \
                   --n 1 --warmup 0 --size "$size" --timeout 60 2>>"$LOGDIR/client.log"); then
        record_error "$key" "$side" "publish after restart failed: $out"
        check_server "$side" "$key" counted
        stop_server "$side"; return
    fi
    seq=$(field first_seq "$(echo "$out" | grep -m1 '^RESULT ')")
    if [ "$seq" != $(( REC_N + 1 )) ]; then
        record_error "$key" "$side" "after restart the next sequence is ${seq:-?}, expected $(( REC_N + 1 )): messages lost"
        stop_server "$side"; return
    fi
    check_server "$side" "$key" || { stop_server "$side"; return; }
    sample "$key.pub" "$side" "$rate"
    sample "$key.disk" "$side" "$disk"
    sample "$key.stop" "$side" "$stop_ms"
    sample "$key.ready" "$side" "$ready"
    sample "$key.rss" "$side" "$rss"
    sample "$key.hwm" "$side" "$hwm"
    sample "$key.cpu" "$side" "$pub_cpu"
    sample "$key.rcpu" "$side" "$(ticks_to_s 0 "$c_ready")"
    printf '  %-11s %-12s publish %s msg/s, %s KiB on disk, stop %s ms, ready %s ms, RSS %s KiB (peak %s KiB)\n' \
        "$(label "$side")" "$key" "$rate" "$disk" "$stop_ms" "$ready" "$rss" "$hwm"
    stop_server "$side"
    rm -rf "${DATA[$side]}"
}

run_scenario() {  # id side
    case "$1" in
        seq)         scen_seq "$2" ;;
        seqi)        TIDE_CFG="$TMP/tide-js-interval.lua"; scen_seq "$2" seqi; TIDE_CFG="$TMP/tide-js.lua" ;;
        async)       scen_async "$2" ;;
        consume)     scen_consume "$2" ;;
        pull1)       scen_pull "$2" 1 "$PULL1_N" ;;
        pull100)     scen_pull "$2" 100 "$PULL_N" ;;
        pull1000)    scen_pull "$2" 1000 "$PULL_N" ;;
        kv)          scen_kv "$2" ;;
        kvi)         scen_kv "$2" kvi ;;
        recovery128) scen_recovery "$2" recovery128 128 ;;
        recovery1k)  scen_recovery "$2" recovery1k 1024 ;;
        recoverykill) scen_recovery "$2" recoverykill 1024 kill ;;
    esac
    rm -rf "${DATA[$2]}"
}

# ---------------------------------------------------------------- header

cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
nats_version=$("$NATS_BIN" --version 2>&1 | head -n 1)
libnats_version=$(dpkg-query -W -f='${Version}' libnats-dev 2>/dev/null || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
[ -n "$(git status --porcelain -- src 2>/dev/null)" ] && commit="$commit (+ local changes)"
fs_type=$(findmnt -n -o FSTYPE -T "$TMP" 2>/dev/null || stat -f -c %T "$TMP" 2>/dev/null || echo unknown)
fs_dev=$(df --output=source "$TMP" 2>/dev/null | tail -n 1)
FSYNC_NOTE="tide: fsync = \"always\" (group commit; a PubAck means the message is fdatasync'd). nats-server 2.9 JetStream: the PubAck is sent before any fsync (file store sync interval 2 min, not configurable in 2.9)."

# ------------------------------------------------------------------- run

: > "$LOGDIR/client.log"
: > "$LOGDIR/errors.log"
: > "$LOGDIR/tide.log"
: > "$LOGDIR/nats.log"
SCENARIOS="seq seqi async consume pull1 pull100 pull1000 kv kvi recovery128 recovery1k recoverykill"
t_start=$(date +%s)

echo "tide durable-publish benchmark: $REPEAT repetition(s); seq $SEQ_N, async $ASYNC_N, consume $CONSUME_N, recovery $REC_N"
echo "  machine: $(nproc) CPU(s), $cpu_model, $mem_total RAM, Linux $(uname -r)"
echo "  data:    $TMP ($fs_type on $fs_dev)"
echo "  tide:    $TIDE_SHOWN (${TIDE_ID}commit $commit)"
echo "  nats:    $nats_version; client libnats $libnats_version"
echo "  fsync:   $FSYNC_NOTE"
# The disk's floor: one small record + fdatasync, growing the file and written
# over zero-filled space (as tide's store does), measured where the data goes.
DISK_FLOOR=$("$BUILD/fsync_probe" "$TMP" 2000 2>&1 || echo "fsync probe failed")
echo "  disk:    $DISK_FLOOR (write + fdatasync in us, no server)"
[ "$fs_type" = tmpfs ] && echo "  WARNING: the data directories are on tmpfs; fdatasync is free there" >&2

for r in $(seq 1 "$REPEAT"); do
    echo "repetition $r/$REPEAT"
    for s in $SIDES; do echo "=== repetition $r" >> "$LOGDIR/$s.log"; done
    # Alternate which server goes first, scenario by scenario.
    if [ $((r % 2)) = 1 ]; then order="tide nats"; else order="nats tide"; fi
    for sc in $SCENARIOS; do
        want "$sc" || continue
        for s in $order; do
            run_scenario "$sc" "$s"
            sleep 0.3
        done
    done
done
elapsed=$(( $(date +%s) - t_start ))

# ----------------------------------------------------------------- table

# rows: key | label | kind (rate, us, ms, mib, sec) | better
ROWS='seq.p50|publish, sequential, 128 B: p50 (us)|us|lower
seq.p99|publish, sequential, 128 B: p99 (us)|us|lower
seq.p999|publish, sequential, 128 B: p99.9 (us)|us|lower
seqi.p50|publish, sequential, tide fsync=interval (as JetStream acks): p50 (us)|us|lower
seqi.p99|publish, sequential, tide fsync=interval (as JetStream acks): p99 (us)|us|lower
seq.mean|publish, sequential, 128 B: mean (us)|us|lower
async|publish, async ('"$MAX_PENDING"' in flight), 128 B (msgs/s)|rate|higher
async.disk|data dir after '"$ASYNC_N"' async msgs (MiB)|mib|lower
consume|push consumer: deliver + ack (msgs/s)|rate|higher
consume.pre|consume preload, async publish (msgs/s)|rate|higher
pull1|pull consumer: fetch 1 + ack (msgs/s)|rate|higher
pull100|pull consumer: fetch 100 + ack (msgs/s)|rate|higher
pull1000|pull consumer: fetch 1000 + ack (msgs/s)|rate|higher
kv.put|KV put, sequential, 128 B, 1,000 keys (puts/s)|rate|higher
kv.putp50|KV put, sequential: p50 (us)|us|lower
kv.get|KV get, sequential, direct get (gets/s)|rate|higher
kv.getp50|KV get, sequential: p50 (us)|us|lower
kvi.put|KV put, sequential, tide fsync=interval (as JetStream acks) (puts/s)|rate|higher
kvi.putp50|KV put, sequential, tide fsync=interval: p50 (us)|us|lower
recovery128.pub|recovery 128 B: async publish of '"$REC_N"' (msgs/s)|rate|higher
recovery128.disk|recovery 128 B: data on disk (MiB)|mib|lower
recovery128.stop|recovery 128 B: SIGTERM to exit (ms)|ms|lower
recovery128.ready|recovery 128 B: exec to PONG on restart (ms)|ms|lower
recovery128.rss|recovery 128 B: RSS after restart (MiB)|mib|lower
recovery128.hwm|recovery 128 B: peak RSS of restart (MiB)|mib|lower
recovery1k.pub|recovery 1 KiB: async publish of '"$REC_N"' (msgs/s)|rate|higher
recovery1k.disk|recovery 1 KiB: data on disk (MiB)|mib|lower
recovery1k.stop|recovery 1 KiB: SIGTERM to exit (ms)|ms|lower
recovery1k.ready|recovery 1 KiB: exec to PONG on restart (ms)|ms|lower
recovery1k.rss|recovery 1 KiB: RSS after restart (MiB)|mib|lower
recovery1k.hwm|recovery 1 KiB: peak RSS of restart (MiB)|mib|lower
recoverykill.ready|recovery 1 KiB after SIGKILL: exec to PONG on restart (ms)|ms|lower
recoverykill.rss|recovery 1 KiB after SIGKILL: RSS after restart (MiB)|mib|lower'
CPUROWS='seq.cpu|publish, sequential|sec|lower
async.cpu|publish, async|sec|lower
consume.cpu|consume (preload + deliver + ack)|sec|lower
pull100.cpu|pull, batch 100 (preload + fetch + ack)|sec|lower
kv.cpu|KV puts and gets|sec|lower
recovery128.cpu|recovery 128 B: publishing|sec|lower
recovery128.rcpu|recovery 128 B: restart until PONG|sec|lower
recovery1k.cpu|recovery 1 KiB: publishing|sec|lower
recovery1k.rcpu|recovery 1 KiB: restart until PONG|sec|lower
recoverykill.rcpu|recovery 1 KiB after SIGKILL: restart until PONG|sec|lower'

MAIN=$(table "$ROWS")
CPU=$(table "$CPUROWS")

print_text() {
    local hdr=$1 body=$2
    [ -n "$body" ] || { echo "(no results)"; return; }
    { echo "$hdr"; echo "$body"; } | column -t -s'|' -o '  '
}

echo
echo "Results: medians of $REPEAT run(s) per server; ratio = tide / nats-server"
echo "(throughput: higher is better; latency, time, memory, disk and CPU: lower is better)"
echo "Durability differs: $FSYNC_NOTE"
echo "The disk alone: $DISK_FLOOR (write + fdatasync of one record, in microseconds; tide writes over zeros)"
echo
print_text "scenario|tide|nats-server|ratio tide/nats|better" "$MAIN"
echo
echo "Server CPU time (user+sys seconds) during each scenario, median:"
echo
print_text "scenario|tide|nats-server|ratio tide/nats|better" "$CPU"
echo
echo "machine: $(nproc) CPU(s), $cpu_model, $mem_total, Linux $(uname -r); data on $fs_type ($fs_dev)"
echo "servers: tide ($TIDE_SHOWN, ${TIDE_ID}commit $commit), $nats_version"
echo "client:  $BENCH, libnats $libnats_version; run took ${elapsed}s"

{
    echo "Durable publish: tide streams against nats-server JetStream (file storage)."
    echo "Medians of $REPEAT run(s) per server, both servers measured alternately in"
    echo "the same run, each run on a freshly started server with an empty data"
    echo "directory; ratio = tide / nats-server."
    echo
    echo "**Durability differs.** tide: \`fsync = \"always\"\` (group commit; a PubAck"
    echo "means the message is fdatasync'd). nats-server 2.9 JetStream: the PubAck is"
    echo "sent before any fsync (the file store syncs every 2 minutes; 2.9 has no"
    echo "setting to sync on every write)."
    echo
    echo "**The disk alone** (one 160-byte record + fdatasync, no server, same directory; tide's store writes over zero-filled space): $DISK_FLOOR, in µs."
    [ "${KIND[tide]}" = nats ] && { echo; echo "**TIDE_JS_OVERRIDE=nats: both columns are nats-server** (a check of the runner and of the noise floor)."; }
    echo
    if [ -n "$MAIN" ]; then md_table "$MAIN"; else echo "(no results)"; fi
    echo
    echo "Server CPU time (user + sys seconds) during each scenario, median:"
    echo
    if [ -n "$CPU" ]; then md_table "$CPU"; else echo "(no results)"; fi
    echo
    echo "- Machine: $(nproc) CPU(s), $cpu_model, $mem_total RAM, Linux $(uname -r); data directories on $fs_type ($fs_dev), page cache warm on restart"
    echo "- tide: \`$TIDE_SHOWN\` (${TIDE_ID}commit $commit), stream \"bench\" {subjects bench.s, fsync always}, consumer \"w\" {deliver deliver.bench, ack_wait 30s, max_ack_pending 20000}"
    echo "- $nats_version: \`nats-server -js -sd DIR\`, stream \"bench\" (subjects bench.s, file storage) and durable push consumer \"w\" (deliver.bench, ack explicit, ack wait 30 s, max ack pending 20000) created with js_AddStream/js_AddConsumer"
    echo "- RSS is VmRSS, peak RSS is VmHWM from /proc: both count file pages a server has mapped with mmap, not only its heap"
    echo "- Client: $BENCH, libnats $libnats_version; consumer acks are \"+ACK\" published to the reply subject of a plain subscription"
    echo "- KV: bucket \"bench\" (history 1) made by js_CreateKeyValue on both servers (on tide a stream made through its JetStream API: fsync always); kvi: on tide the same stream asked for by STREAM.CREATE with metadata.tide_fsync \"interval\" (acked once written, synced every second), bound with js_KeyValue; kvStore_Put / kvStore_Get of libnats"
    echo "- Settings: BENCH_REPEAT=$REPEAT BENCH_JS_SEQ_N=$SEQ_N BENCH_JS_ASYNC_N=$ASYNC_N BENCH_JS_CONSUME_N=$CONSUME_N BENCH_JS_KV_N=$KV_N BENCH_RECOVERY_N=$REC_N BENCH_JS_MAX_PENDING=$MAX_PENDING${ONLY:+ BENCH_ONLY=\"$ONLY\"}; run took ${elapsed}s; $(date -u '+%Y-%m-%d %H:%M UTC')"
} > "$MD"
echo "markdown: $MD"

if [ "$FAILED" != 0 ]; then
    echo
    echo "FAILED scenarios:"
    sed 's/^/  /' "$LOGDIR/errors.log"
    exit 1
fi
exit 0
