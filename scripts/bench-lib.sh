# bench-lib.sh - what the benchmark runners (bench.sh, bench-js.sh) share:
# the side-by-side table built from the samples file ($SAMPLES: lines
# "key<TAB>side<TAB>value", value ERR for a failed run) and its markdown form.
# Sourced, not run.

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
