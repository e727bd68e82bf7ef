#!/usr/bin/env bash
# Handlers in cluster mode (the last step of `make bench`): handler
# throughput and end-to-end latency on one tide node without a cluster, and
# with 1, 2 and 3 tide nodes sharing one consumer of an R3 stream kept by
# three routed nats-servers with JetStream, all on loopback.  The work of
# one run is in bench/cluster_handlers.lua (what it measures is said there).
# Every run starts its servers and nodes fresh and stops them.
#
# Environment:
#   BENCH_REPEAT        runs per setup (default 3); the table shows medians
#   BENCH_CLUSTER_N     events of the throughput measure (default 20000)
#   BENCH_CLUSTER_SPIN  empty loop iterations per handler call, the
#                       handler's own work (default 10000, about 30 µs)
#   NATS_SERVER_BIN     nats-server binary (default: nats-server on PATH)
#   BUILD               build directory (default build)
# Output: the table on stdout and in $BUILD/bench-cluster.md.
set -u
cd "$(dirname "$0")/.." || exit 2

BUILD=${BUILD:-build}
REPEAT=${BENCH_REPEAT:-3}
N=${BENCH_CLUSTER_N:-20000}
SPIN=${BENCH_CLUSTER_SPIN:-10000}
MD=$BUILD/bench-cluster.md
LOGDIR=$BUILD/bench-logs
die() { echo "bench-cluster: $*" >&2; exit 2; }
[ -x "$BUILD/tide" ] && [ -f "$BUILD/procmod.so" ] || die "$BUILD/tide or procmod.so not built (run: make all)"
case "$REPEAT$N$SPIN" in *[!0-9]*) die "BENCH_* values must be integers" ;; esac
mkdir -p "$LOGDIR"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-cluster.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
SAMPLES=$LOGDIR/cluster-samples.tsv
: > "$SAMPLES"
FAILED=0

for r in $(seq 1 "$REPEAT"); do
    for nodes in 0 1 2 3; do
        out=$(TIDE_ROOT=$PWD TIDE_BIN=$PWD/$BUILD/tide TIDE_TEST_TMP=$TMP LUA_CPATH="$PWD/$BUILD/?.so;;" \
              timeout 600 lua5.4 bench/cluster_handlers.lua "$nodes" "$N" "$SPIN" 2>>"$LOGDIR/cluster.log")
        line=$(echo "$out" | grep '^RESULT' | tail -1)
        if [ -z "$line" ]; then
            echo "bench-cluster: run $r with $nodes nodes failed (see $LOGDIR/cluster.log)" >&2
            FAILED=1
            continue
        fi
        printf '%s\t%s\n' "$nodes" "$line" >> "$SAMPLES"
    done
done

{
    echo "| setup | handled events/s | latency p50 ms | latency p99 ms |"
    echo "|---|---:|---:|---:|"
    for nodes in 0 1 2 3; do
        label="$nodes tide nodes on a 3-server cluster, R3 stream"
        [ "$nodes" = 1 ] && label="1 tide node on a 3-server cluster, R3 stream"
        [ "$nodes" = 0 ] && label="1 tide node, no cluster, local stream"
        awk -F'\t' -v n="$nodes" -v label="$label" '
        function med(a, k,   i, j, t) {
            for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
        }
        $1 == n {
            k++
            split($2, f, " ")
            for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
            rate[k] = v["rate"]; p50[k] = v["p50_ms"]; p99[k] = v["p99_ms"]
        }
        END {
            if (!k) { print "| " label " | failed | | |"; exit }
            printf "| %s | %.0f | %.2f | %.2f |\n", label, med(rate, k), med(p50, k), med(p99, k)
        }' "$SAMPLES"
    done
    echo
    echo "$N events per throughput run, handler spin $SPIN, $REPEAT runs per setup (medians); $(nproc) cores."
} | tee "$MD"
exit $FAILED
