# bench-lib.sh - what the benchmark runners (scripts/bench.sh and
# scripts/bench-*.sh) share: free loopback ports, medians, a process's CPU
# ticks and RSS, the samples file ($SAMPLES: lines "key<TAB>side<TAB>value",
# value ERR for a failed run), the side-by-side table built from it and its
# markdown form.  Sourced, not run; it defines functions and the port range
# only.

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

# Resident and peak resident size of a process, in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# field NAME LINE -> value of NAME=... in a RESULT line
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }

label() { case "$1" in tide) echo "tide" ;; nats) echo "nats-server" ;; esac; }

# One sample line into $SAMPLES: sample KEY SIDE VALUE.
sample() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$SAMPLES"; }

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
