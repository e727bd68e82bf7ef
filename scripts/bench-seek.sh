#!/usr/bin/env bash
# A big stream, once, tide beside nats-server -js (not part of `make bench`:
# it writes BENCH_SEEK_N x 1 KiB, 10 GiB by default, per server):
#
#   fill       BENCH_SEEK_N (default 10,000,000) async publishes of 1 KiB
#              (js_bench async), then SIGKILL once every PubAck came back
#   kill       restart on that data: exec to the first PONG (ms), RSS
#   term       SIGTERM, restart again: stop (ms), exec to PONG (ms), RSS
#   get        $JS.API.STREAM.MSG.GET of a sequence in the middle (ms), with
#              the stream's files dropped from the page cache before (cold)
#              and again right after (warm), three times
#   time       a seek by time to another record in the middle: tide
#              $TIDE.ADMIN.STREAM.EVENTS since T (one event); nats-server
#              2.9 has no get by time, so a push consumer created with
#              deliver_policy by_start_time, until its first message; cold
#              and warm as above; the sequence found is shown beside the
#              record's
#
# The servers run one after the other, each on its own data directory under
# BENCH_SEEK_DIR (default /work/bench-seek), deleted when its turn ends.
# Loopback only.  Prints one line per figure.
set -u
cd "$(dirname "$0")/.." || exit 2
. scripts/bench-lib.sh

BUILD=${BUILD:-build}
N=${BENCH_SEEK_N:-10000000}
DIR=${BENCH_SEEK_DIR:-/work/bench-seek}
NATS_BIN=${NATS_SERVER_BIN:-nats-server}
BENCH=$BUILD/js_bench
PID=
die() { echo "bench-seek: $*" >&2; exit 2; }
[ -x "$BUILD/tide" ] || die "$BUILD/tide not built (make all)"
[ -x "$BENCH" ] || die "$BENCH not built (make $BENCH)"
command -v "$NATS_BIN" >/dev/null || die "$NATS_BIN not found"
mkdir -p "$DIR"
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$DIR/tide" "$DIR/nats"; }
trap cleanup EXIT

rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# Syncs and drops the side's data files from the page cache (only those).
evict() {
    find "$DIR/$1" -type f -print0 | xargs -0 python3 -c '
import os, sys
for p in sys.argv[1:]:
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        continue  # (an ephemeral consumer going away)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)'
}

start() { # side port
    local t0
    t0=$(date +%s%N)
    case "$1" in
        tide) "$BUILD/tide" serve --no-http -c "$DIR/tide.lua" -a 127.0.0.1 -p "$2" >>"$DIR/tide.log" 2>&1 & ;;
        nats) "$NATS_BIN" -js -sd "$DIR/nats" -a 127.0.0.1 -p "$2" >>"$DIR/nats.log" 2>&1 & ;;
    esac
    PID=$!
    READY=$("$BENCH" wait-ready --url "nats://127.0.0.1:$2" --since-ns "$t0" --timeout 600 | sed -n 's/.*ready_ms=\([0-9.]*\).*/\1/p')
    [ -n "$READY" ] || die "$1 did not come up"
}

stop() { # signal
    local t0
    t0=$(now_ms)
    kill "-$1" "$PID"
    wait "$PID" 2>/dev/null
    STOP=$(( $(now_ms) - t0 ))
    PID=
}

side() {
    local s=$1 port flags="" line t mid
    rm -rf "${DIR:?}/$s"
    mkdir -p "$DIR/$s"
    cat > "$DIR/tide.lua" <<EOF
storage { dir = "$DIR/tide" }
stream "bench" { subjects = { "bench.s" }, fsync = "always" }
EOF
    [ "$s" = nats ] && flags=--create-stream
    port=$(free_port); start "$s" "$port"
    line=$("$BENCH" async --url "nats://127.0.0.1:$port" --n "$N" --size 1024 --max-pending 4096 --timeout 3000 $flags)
    echo "$s fill: $(field rate "$line") msg/s, $(du -sh "$DIR/$s" | cut -f1) on disk"
    stop KILL
    port=$(free_port); start "$s" "$port"
    echo "$s restart after SIGKILL: $READY ms to PONG, RSS $(rss_mb "$PID") MB"
    stop TERM
    echo "$s SIGTERM to exit: $STOP ms"
    port=$(free_port); start "$s" "$port"
    echo "$s restart after SIGTERM: $READY ms to PONG, RSS $(rss_mb "$PID") MB"
    mid=$(( N / 2 + 7 ))
    for how in cold warm cold warm cold warm; do
        [ $how = cold ] && evict "$s"
        line=$(lua5.4 bench/seek.lua get "$port" bench "$mid" | grep '^RESULT')
        echo "$s get seq $mid ($how): $(field ms "$line") ms -> seq $(field seq "$line")"
    done
    # The time of another record in the middle, then a seek to it.
    t=$(field time "$(lua5.4 bench/seek.lua get "$port" bench $(( N / 3 + 777 )) | grep '^RESULT')")
    for how in cold warm cold warm cold warm; do
        [ $how = cold ] && evict "$s"
        line=$(lua5.4 bench/seek.lua "$s" "$port" bench "$t" | grep '^RESULT')
        echo "$s seek by time $t ($how): $(field ms "$line") ms -> seq $(field seq "$line") (want $(( N / 3 + 777 )))"
    done
    stop TERM
    rm -rf "${DIR:?}/$s"
}

echo "bench-seek: $N x 1 KiB per server; $(nproc) cores, $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
for s in ${BENCH_SEEK_SIDES:-tide nats}; do side "$s"; done
