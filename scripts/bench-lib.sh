# bench-lib.sh - what the benchmark runners (scripts/bench.sh and
# scripts/bench-*.sh) share: free loopback ports, medians, a process's CPU
# ticks and RSS, waiting for a server to be ready and stopping it, the
# samples file ($SAMPLES: lines "key<TAB>side<TAB>value", value ERR for a
# failed run) and the failures noted beside it, the side-by-side table
# built from the samples and its markdown form.  Sourced, not run; it
# defines functions and the port range only.

# A loopback port no socket uses (in any state), below the kernel's
# ephemeral range (a scenario with many connections leaves client ports in
# TIME_WAIT there, which would make a new server's bind() fail), and not one
# of the ports already in the caller's PORT array.  Fails after 200 tries.
read -r EPH_LO EPH_HI < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768; EPH_HI=60999; }
if [ "$EPH_LO" -gt 12000 ]; then PORT_LO=10000; PORT_HI=$((EPH_LO - 1))
else PORT_LO=$((EPH_HI + 1)); PORT_HI=65000; fi
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( PORT_LO + (RANDOM * 32768 + RANDOM) % (PORT_HI - PORT_LO + 1) ))
        case " ${PORT[*]:-} " in *" $p "*) continue ;; esac
        if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ]; then
            continue
        fi
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    echo "bench: no free port found" >&2
    return 1
}

# The median of the numbers on stdin, one a line (the upper one of an even
# count); 0 for none.  median_of: the same for its words.
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }
median_of() { echo $1 | tr ' ' '\n' | median; }

# utime + stime of a process, in clock ticks (0 once it is gone).
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    echo "$stat" | awk '{ print $12 + $13 }'
}

# CPU seconds between two cpu_ticks readings A and B, with two decimals.
ticks_to_s() { awk -v a="$1" -v b="$2" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / t }'; }

# Resident and peak resident size of a process, in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# wait_ping PORT [TRIES [PID [OUT]]]: waits until the NATS server on
# loopback PORT answers `$BENCH ping` (nats_bench), at most TRIES tries 0.05 s
# apart (default 100), giving up at once when process PID (if given) has
# gone; ping's output goes to OUT (default /dev/null).  0 once it answered,
# else 1.
wait_ping() {
    local port=$1 tries=${2:-100} pid=${3:-} out=${4:-/dev/null}
    for _ in $(seq 1 "$tries"); do
        "$BENCH" ping --url "nats://127.0.0.1:$port" >"$out" 2>/dev/null && return 0
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# wait_log_ready LOG [TRIES]: waits until LOG holds "Server is ready" (tide
# and nats-server both log it once they listen), at most TRIES tries 0.05 s
# apart (default 100).  0 once it is there, else 1.  The caller empties LOG
# before it starts the server: the server's own redirection happens in the
# child, possibly after the first look here.
wait_log_ready() {
    for _ in $(seq 1 "${2:-100}"); do
        grep -q "Server is ready" "$1" && return 0
        sleep 0.05
    done
    return 1
}

# stop_pid PID [SECONDS]: SIGTERM, up to SECONDS (default 10) for the
# process to exit, then SIGKILL; reaps it (it must be a child of this shell)
# and sets STOP_RC to its exit status.  1 when it had to be killed, else 0
# (also for an empty PID, with STOP_RC empty).
stop_pid() {
    local pid=$1 secs=${2:-10} killed=0
    STOP_RC=""
    [ -n "$pid" ] || return 0
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 $(( secs * 50 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null
            killed=1
        fi
    fi
    wait "$pid" 2>/dev/null
    STOP_RC=$?
    return $killed
}

# idle_hold URL CONNS HOLD TIMEOUT OUT CLIENT_LOG TRIES: starts `$BENCH
# idle` holding CONNS connections to URL (for HOLD seconds at the most,
# killed 60 s after that; TIMEOUT its own --timeout), its stdin a fifo in $TMP kept open on fd 7, its output
# in OUT and its errors added to CLIENT_LOG; sets IDLE_CLIENT, then waits up
# to TRIES times 0.1 s for its RESULT or ERROR line and sets LINE to it
# (empty when none came, or the client exited first).  idle_release lets
# the client go.
idle_hold() {
    local url=$1 conns=$2 hold=$3 tmo=$4 out=$5 log=$6 tries=$7
    rm -f "$TMP/idle.fifo" "$out"
    mkfifo "$TMP/idle.fifo"
    timeout -k 5 $(( hold + 60 )) "$BENCH" idle --url "$url" --conns "$conns" --hold "$hold" --timeout "$tmo" \
        < "$TMP/idle.fifo" > "$out" 2>>"$log" &
    IDLE_CLIENT=$!
    exec 7>"$TMP/idle.fifo"
    LINE=""
    for _ in $(seq 1 "$tries"); do
        LINE=$(grep -m1 -E '^(RESULT|ERROR) ' "$out" 2>/dev/null)
        [ -n "$LINE" ] && break
        kill -0 "$IDLE_CLIENT" 2>/dev/null || break
        sleep 0.1
    done
}

# idle_release: closes fd 7 (stdin EOF: the client closes its connections
# and exits), reaps the client and sets IDLE_RC to its exit status.
idle_release() {
    exec 7>&-
    wait "$IDLE_CLIENT"
    IDLE_RC=$?
    IDLE_CLIENT=""
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# field NAME LINE -> value of NAME=... in a RESULT line
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }

label() { case "$1" in tide) echo "tide" ;; nats) echo "nats-server" ;; esac; }

# One sample line into $SAMPLES: sample KEY SIDE VALUE.
sample() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$SAMPLES"; }

# The runners with one server a side (bench.sh, bench-js.sh) keep its pid
# in PID[SIDE] and its port in PORT[SIDE]; a failure sets FAILED and goes
# to $LOGDIR/errors.log.

# alive SIDE: whether SIDE's server runs.
alive() { [ -n "${PID[$1]:-}" ] && kill -0 "${PID[$1]}" 2>/dev/null; }

# record_error KEY SIDE MESSAGE: one failed run of KEY.  note_error only adds
# the message (for a second symptom of a run already counted as failed).
record_error() {
    sample "$1" "$2" "ERR"
    note_error "$@"
}

note_error() {
    local key=$1 side=$2; shift 2
    FAILED=1
    echo "  !! $(label "$side") $key: $*" >&2
    echo "$(date +%T) $(label "$side") $key: $*" >> "$LOGDIR/errors.log"
}

# check_server SIDE KEY [counted]: after a run of KEY, 0 while SIDE's
# server runs; else its exit is a failure of KEY (only noted when counted
# says the run was already counted as failed), its log's tail
# ($LOGDIR/SIDE.log) is shown, PID[SIDE] cleared and on_server_gone SIDE
# called if the runner defines it (bench.sh starts the server again there);
# then 1.
check_server() {
    local side=$1 key=$2 counted=${3:-} rc fn=record_error
    alive "$side" && return 0
    wait "${PID[$side]}" 2>/dev/null; rc=$?
    [ -n "$counted" ] && fn=note_error
    $fn "$key" "$side" "$(label "$side") exited (status $rc) during $key; see $LOGDIR/$side.log"
    tail -n 10 "$LOGDIR/$side.log" | sed 's/^/     /' >&2
    PID[$side]=""
    if declare -F on_server_gone >/dev/null; then on_server_gone "$side"; fi
    return 1
}

# run_client SIDE KEY TIMEOUT SUBCOMMAND ARGS...: one run of KEY, $BENCH
# SUBCOMMAND ARGS against SIDE's server (PORT[SIDE]), killed after TIMEOUT
# seconds; its output is kept in $LOGDIR/client.log.  0 with LINE (its
# RESULT line) and CPU_S (the server's CPU seconds meanwhile) set; else the
# failure recorded, LINE empty, 1.
run_client() {
    local side=$1 key=$2 tmo=$3 sub=$4 c0 c1 rc out
    shift 4
    LINE=""
    if ! alive "$side"; then
        record_error "$key" "$side" "server not running"
        return 1
    fi
    c0=$(cpu_ticks "${PID[$side]}")
    out=$(timeout -k 5 "$tmo" "$BENCH" "$sub" --url "nats://127.0.0.1:${PORT[$side]}" "$@" \
          2>>"$LOGDIR/client.log")
    rc=$?
    c1=$(cpu_ticks "${PID[$side]}")
    LINE=$(echo "$out" | grep -m1 '^RESULT ')
    echo "$(label "$side") $key: $out" >> "$LOGDIR/client.log"
    if [ $rc -ne 0 ] || [ -z "$LINE" ]; then
        [ $rc -eq 124 ] && out="client killed after ${tmo}s"
        record_error "$key" "$side" "${out:-client exited with status $rc}"
        check_server "$side" "$key" counted
        LINE=""
        return 1
    fi
    if ! check_server "$side" "$key"; then LINE=""; return 1; fi
    CPU_S=$(ticks_to_s "$c0" "$c1")
    return 0
}

# Prints "label|tide|nats|ratio|better" rows with medians of the samples, for
# rows "key|label|kind|better" (kind: rate, us, ms, ns, mib, kib, sec).  A row
# whose runs all failed still shows, with how many failed.
table() {
    echo "$1" | awk -F'|' -v samples="$SAMPLES" '
    function median(key,   n, i, j, t, v) {
        n = cnt[key]
        if (n == 0) return ""
        for (i = 1; i <= n; i++) v[i] = val[key, i]
        for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function commas(x,   s, neg) {
        s = sprintf("%.0f", x); neg = ""
        if (substr(s, 1, 1) == "-") { neg = "-"; s = substr(s, 2) }
        while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
        return neg s
    }
    function fmt(x, kind) {
        if (x == "") return "n/a"
        if (kind == "rate") return commas(x)
        if (kind == "us") return sprintf("%.1f", x)
        if (kind == "ms" || kind == "ns") return sprintf("%.0f", x)
        if (kind == "kib") return sprintf("%.1f", x)
        if (kind == "mib") return sprintf("%.1f", x / 1024)
        if (kind == "sec") return sprintf("%.2f", x)
        return x
    }
    BEGIN {
        FS = "\t"
        while ((getline line < samples) > 0) {
            split(line, f, "\t")
            k = f[1] SUBSEP f[2]
            if (f[3] == "ERR") { err[k]++; continue }
            cnt[k]++; val[k, cnt[k]] = f[3]
        }
        FS = "|"
    }
    {
        key = $1; t = median(key SUBSEP "tide"); n = median(key SUBSEP "nats")
        base = key; sub(/\..*/, "", base)
        et = err[base SUBSEP "tide"] + 0; en = err[base SUBSEP "nats"] + 0
        if (t == "" && n == "" && et == 0 && en == 0) next
        ts = fmt(t, $3); ns = fmt(n, $3)
        if (et > 0) ts = ts " (" et " failed)"
        if (en > 0) ns = ns " (" en " failed)"
        ratio = (t != "" && n != "" && n + 0 != 0) ? sprintf("%.2f", t / n) : "n/a"
        print $2 "|" ts "|" ns "|" ratio "|" $4
    }'
}

# The rows of `table` as a markdown table.
md_table() {
    echo "| scenario | tide | nats-server | ratio tide/nats | better |"
    echo "|---|---:|---:|---:|---|"
    echo "$1" | awk -F'|' 'NF { gsub(/->/, "→"); gsub(/\(us\)/, "(µs)"); print "| " $1 " | " $2 " | " $3 " | " $4 " | " $5 " |" }'
}
