/* replay.c - tide check FLOW --replay DATADIR:STREAM (docs/deploys.md):
 * the live rules (FLOW0) and a candidate (FLOW) over a stream's stored
 * events, offline, compared as a shadow compares them on a node, with
 * tide.kv as the node's (its bucket `tide`, the stream KV_tide).  The
 * streams' files are copied to a temporary directory first: opening a log
 * may write to it (recovery, checkpoints), and DATADIR must stay as it is. */
#include <errno.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "cJSON.h"
#include "flow.h"
#include "json_int.h"
#include "kv.h"
#include "kv_lua.h"
#include "log.h"
#include "proto.h"
#include "replay.h"
#include "script.h"
#include "server.h"
#include "slog.h"
#include "util.h"

typedef struct replay_args {
    const char *flow, *against, *json_dir, *from, *to;
    char data[4096], stream[256];
    int json;
} replay_args_t;

/* Copies the regular files of dir src into dst (one level, as a stream's
 * directory is).  0, or -1 with err. */
static int copy_dir(const char *src, const char *dst, char *err, size_t errsz)
{
    DIR *d = opendir(src);
    struct dirent *e;
    char a[4600], b[4600], buf[65536];
    if (!d) {
        snprintf(err, errsz, "cannot open %.900s: %s", src, strerror(errno));
        return -1;
    }
    while ((e = readdir(d))) {
        struct stat sb;
        snprintf(a, sizeof a, "%.4000s/%.255s", src, e->d_name);
        snprintf(b, sizeof b, "%.4000s/%.255s", dst, e->d_name);
        if (stat(a, &sb) < 0 || !S_ISREG(sb.st_mode))
            continue;
        FILE *in = fopen(a, "rb"), *out = in ? fopen(b, "wb") : NULL;
        size_t n;
        int bad = !in || !out;
        while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0)
            bad = fwrite(buf, 1, n, out) != n;
        bad |= in && ferror(in);
        if (in)
            fclose(in);
        if (out && fclose(out))
            bad = 1;
        if (bad) {
            snprintf(err, errsz, "cannot copy %.900s: %s", a, strerror(errno));
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return 0;
}

/* RFC 3339 (UTC "Z" or +hh:mm, optional fraction) to ns; -1 when not. */
static int64_t replay_time(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    int64_t frac = 0, scale = 1000000000, off = 0;
    if (!p)
        return -1;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
    if (*p == 'Z' || *p == 'z')
        p++;
    else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        off = ((p[1] - '0') * 10 + p[2] - '0') * 3600 + ((p[4] - '0') * 10 + p[5] - '0') * 60;
        off = *p == '-' ? -off : off;
        p += 6;
    } else
        return -1;
    if (*p)
        return -1;
    return ((int64_t)timegm(&tm) - off) * 1000000000 + frac;
}

/* A bound: a sequence, or the first sequence at or after a time (to_end:
 * the last one at or before it).  0, or -1 when it is neither. */
static int replay_bound(slog_t *l, const char *s, int to_end, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s >= '0' && *s <= '9' && !*end && !errno) {
        *out = v;
        return 0;
    }
    int64_t ns = replay_time(s);
    if (ns < 0)
        return -1;
    if (to_end) {
        uint64_t first = slog_seq_at_time(l, ns + 1);
        *out = first ? first - 1 : 0;
    } else
        *out = slog_seq_at_time(l, ns);
    return 0;
}

/* The entry file the node in data last ran: the live revision's first
 * file in <data>/rules/history.json.  0, or -1 with err. */
static int replay_last_entry(const char *data, char *out, size_t n, char *err, size_t errsz)
{
    char path[4200];
    size_t len;
    snprintf(path, sizeof path, "%s/rules/history.json", data);
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    long size = f && fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    len = 0;
    if (size > 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size)))
        len = fread(text, 1, (size_t)size, f);
    if (f)
        fclose(f);
    cJSON *h = len ? cJSON_ParseWithLength(text, len) : NULL, *r;
    free(text);
    double live = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(h, "live"));
    int rc = -1;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(h, "revisions")) {
        const cJSON *fi = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "files"), 0);
        if (cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "rev")) == live && cJSON_IsString(fi)) {
            snprintf(out, n, "%s", fi->valuestring);
            rc = 0;
        }
    }
    if (rc < 0)
        snprintf(err, errsz, "no rules history in %.900s/rules (give the live rules with --against FLOW0)", data);
    cJSON_Delete(h);
    return rc;
}

/* base64url without padding (a tide.kv key that a bucket key cannot be,
 * kv_lua.h) decoded into out (n bytes at least); its length, or -1. */
static long replay_b64url(const char *s, size_t n, char *out)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    long len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(alpha, s[i], 64);
        if (!p || !s[i])
            return -1;
        acc = (acc << 6) | (uint32_t)(p - alpha);
        if ((bits += 6) >= 8) {
            bits -= 8;
            out[len++] = (char)((acc >> bits) & 0xff);
        }
    }
    return len;
}

/* Applies one record of the bucket `tide` to kv: a value (typed by its
 * Tide-Kv-Type header, as tide.kv stored it), or a DEL/PURGE marker. */
static void replay_kv_record(kv_t *kv, const slog_rec_t *r)
{
    static const char prefix[] = "$KV." KV_TIDE_BUCKET ".";
    char key[2048], num[64];
    size_t kl = r->subject_len - (sizeof prefix - 1), tl = 0, ol = 0;
    if (r->subject_len <= sizeof prefix - 1 || memcmp(r->subject, prefix, sizeof prefix - 1) ||
        kl >= sizeof key)
        return;
    const char *k = r->subject + sizeof prefix - 1;
    if (k[0] == '=') { /* an encoded key */
        long dl = replay_b64url(k + 1, kl - 1, key);
        if (dl < 0)
            return;
        kl = (size_t)dl;
    } else
        memcpy(key, k, kl);
    const char *op = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, "KV-Operation", &ol) : NULL;
    if (op && ((ol == 3 && !memcmp(op, "DEL", 3)) || (ol == 5 && !memcmp(op, "PURGE", 5)))) {
        kv_del(kv, key, kl);
        return;
    }
    const char *t = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, "Tide-Kv-Type", &tl) : NULL;
    kv_value_t v = {.type = KV_STRING};
    snprintf(num, sizeof num, "%.*s", (int)(r->payload_len < sizeof num ? r->payload_len : 0), r->payload);
    if (t && tl == 3 && !memcmp(t, "int", 3))
        v = (kv_value_t){.type = KV_INT, .i = strtoll(num, NULL, 10)};
    else if (t && tl == 5 && !memcmp(t, "float", 5))
        v = (kv_value_t){.type = KV_FLOAT, .f = strtod(num, NULL)};
    else if (t && tl == 4 && !memcmp(t, "bool", 4))
        v = (kv_value_t){.type = KV_BOOL, .i = !strcmp(num, "true")};
    else {
        v.type = t && tl == 4 && !memcmp(t, "json", 4) ? KV_JSON : KV_STRING;
        if (!(v.s = util_mem_dup(r->payload, r->payload_len)))
            return;
        v.len = r->payload_len;
    }
    kv_value_t *nv = malloc(sizeof *nv); /* the store keeps the value itself */
    if (!nv) {
        free(v.s);
        return;
    }
    *nv = v;
    if (kv_set(kv, key, kl, nv) != 0)
        log_warn("tide check: tide.kv key '%.*s' could not be set for the replay", (int)kl, key);
}

/* Fills kv with the tide.kv of data: its stream KV_tide copied to dir and
 * read whole (no such stream: kv stays empty).  0, or -1 with err. */
static int replay_kv_load(kv_t *kv, const char *data, const char *dir, struct event_base *base, char *err,
                          size_t errsz)
{
    char src[4400];
    struct stat sb;
    slog_opts_t o = {.segment_size = 64 << 20, .fsync = FSYNC_NEVER};
    slog_report_t rep;
    slog_rec_t r;
    char *buf = NULL;
    size_t cap = 0;
    slog_t *l = NULL;
    snprintf(src, sizeof src, "%s/streams/KV_%s", data, KV_TIDE_BUCKET);
    if (stat(src, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return 0;
    if (util_mkdirs(dir) < 0) {
        snprintf(err, errsz, "cannot make %.900s: %s", dir, strerror(errno));
        return -1;
    }
    if (copy_dir(src, dir, err, errsz) < 0 || !(l = slog_open(dir, &o, base, NULL, NULL, &rep, err, errsz)))
        return -1;
    for (uint64_t seq = 1, last = slog_last(l, NULL); seq <= last; seq++)
        if (slog_has(l, seq) && slog_read(l, seq, &r, &buf, &cap) == 1)
            replay_kv_record(kv, &r);
    free(buf);
    slog_close(l);
    return 0;
}

/* Runs every stored event from..to of l through h (which has the shadow). */
static int replay_events(script_host_t *h, slog_t *l, uint64_t from, uint64_t to)
{
    char *buf = NULL;
    size_t cap = 0;
    slog_rec_t r;
    for (uint64_t seq = from; seq && seq <= to; seq++) {
        if (!slog_has(l, seq) || slog_read(l, seq, &r, &buf, &cap) < 0)
            continue;
        proto_msg_t m = {r.subject, r.subject_len, NULL, 0, r.hdr_len ? r.hdr : NULL, r.hdr_len, r.payload,
                         r.payload_len};
        script_process(h, NULL, &m);
    }
    free(buf);
    return 0;
}

/* Prints the diff as tide rules diff does (print) or its JSON; tide.kv
 * starts as the data directory's (copied to kv_dir). */
static int replay_run(const replay_args_t *a, const char *live_flow, slog_t *l, const char *kv_dir,
                      struct event_base *base, void (*print)(const cJSON *r))
{
    char err[1024];
    uint64_t from = 1, to = slog_last(l, NULL);
    int rc = 1;
    size_t len;
    char *out = NULL;
    server_opts_t o;
    server_t *srv = NULL;
    if ((a->from && replay_bound(l, a->from, 0, &from) < 0) || (a->to && replay_bound(l, a->to, 1, &to) < 0) ||
        from == 0) {
        fprintf(stderr, "tide check: bad range: --from and --to take a sequence (1, 2, ...) or an RFC 3339 time\n");
        return 2;
    }
    if (a->from && from > slog_last(l, NULL)) {
        fprintf(stderr, "tide check: bad range: no stored event from %s on (the last is %" PRIu64 ")\n", a->from,
                slog_last(l, NULL));
        return 2;
    }
    if (to > slog_last(l, NULL))
        to = slog_last(l, NULL); /* an end past the last event: up to it */
    if (to < from && (a->from || a->to)) { /* (an empty stream without bounds: no events) */
        fprintf(stderr, "tide check: bad range: --to %" PRIu64 " is before --from %" PRIu64 "\n", to, from);
        return 2;
    }
    script_host_t *h = script_host_new(live_flow, NULL, err, sizeof err);
    if (!h) {
        fprintf(stderr, "tide check: %s: %s\n", live_flow, err);
        return 1;
    }
    server_opts_default(&o);
    script_host_apply_settings(h, &o);
    if (!(srv = server_new(&o)))
        goto done;
    script_host_attach_offline(h, srv);
    if (replay_kv_load(script_host_kv(h), a->data, kv_dir, base, err, sizeof err) < 0) {
        fprintf(stderr, "tide check: tide.kv of %s: %s\n", a->data, err);
        goto done;
    }
    if (script_shadow_start(h, a->flow, err, sizeof err) < 0) {
        fprintf(stderr, "tide check: %s: %s\n", a->flow, err);
        goto done;
    }
    replay_events(h, l, from, to);
    if (!(out = script_shadow_diff_json(h, &len)))
        goto done;
    if (a->json)
        printf("%s\n", out);
    else {
        cJSON *r = cJSON_Parse(out);
        print(r);
        cJSON_Delete(r);
    }
    rc = 0;
done:
    free(out);
    if (srv)
        server_free(srv);
    script_host_free(h);
    return rc;
}

/* Parses argv into a; 0, or 2 after a usage message. */
static int replay_parse(int argc, char **argv, replay_args_t *a)
{
    const char *spec = NULL;
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        int more = i + 1 < argc;
        if (!strcmp(argv[i], "--replay") && more)
            spec = argv[++i];
        else if (!strcmp(argv[i], "--from") && more)
            a->from = argv[++i];
        else if (!strcmp(argv[i], "--to") && more)
            a->to = argv[++i];
        else if (!strcmp(argv[i], "--against") && more)
            a->against = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            a->json = 1;
        else if (argv[i][0] != '-' && !a->flow)
            a->flow = argv[i];
        else
            goto usage;
    }
    const char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!a->flow || !colon || colon == spec || !colon[1] || (size_t)(colon - spec) >= sizeof a->data)
        goto usage;
    snprintf(a->data, sizeof a->data, "%.*s", (int)(colon - spec), spec);
    snprintf(a->stream, sizeof a->stream, "%s", colon + 1);
    return 0;
usage:
    fprintf(stderr, "usage: tide check FLOW --replay DATADIR:STREAM [--from SEQ|TIME] [--to SEQ|TIME] "
                    "[--against FLOW0] [--json]\n");
    return 2;
}

int replay_main(int argc, char **argv, void (*print)(const cJSON *r))
{
    replay_args_t a;
    char src[4400], tmp[4096] = "", dir[4200], kv_dir[4200], err[1024], live[4096];
    struct stat sb;
    slog_t *l = NULL;
    struct event_base *base = NULL;
    int rc = replay_parse(argc, argv, &a);
    if (rc)
        return rc;
    log_set_level(LOG_WARN); /* the diff is the output; warnings and errors still show */
    rc = 2;
    if (stat(a.data, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "tide check: no data directory %s\n", a.data);
        return 2;
    }
    snprintf(src, sizeof src, "%s/streams/%s", a.data, a.stream);
    if (!strchr(a.stream, '/') && (stat(src, &sb) < 0 || !S_ISDIR(sb.st_mode))) /* a memory stream's log */
        snprintf(src, sizeof src, "%s/memory/%s", a.data, a.stream);
    if (strchr(a.stream, '/') || stat(src, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "tide check: no stream %s in %s\n", a.stream, a.data);
        return 2;
    }
    if (a.against)
        snprintf(live, sizeof live, "%s", a.against);
    else if (replay_last_entry(a.data, live, sizeof live, err, sizeof err) < 0) {
        fprintf(stderr, "tide check: %s\n", err);
        return 2;
    }
    rc = 1;
    slog_opts_t o = {.segment_size = 64 << 20, .fsync = FSYNC_NEVER};
    slog_report_t rep;
    if (flow_make_tmpdir("tide-replay", tmp, sizeof tmp) < 0) {
        fprintf(stderr, "tide check: cannot make a temporary directory: %s\n", strerror(errno));
        tmp[0] = '\0';
        goto done;
    }
    snprintf(dir, sizeof dir, "%s/stream", tmp);
    snprintf(kv_dir, sizeof kv_dir, "%s/kv", tmp);
    if (util_mkdirs(dir) < 0)
        snprintf(err, sizeof err, "cannot make %.900s: %s", dir, strerror(errno));
    if (access(dir, W_OK) < 0 || copy_dir(src, dir, err, sizeof err) < 0 || !(base = event_base_new()) ||
        !(l = slog_open(dir, &o, base, NULL, NULL, &rep, err, sizeof err))) {
        fprintf(stderr, "tide check: stream %s: %s\n", a.stream, err);
        goto done;
    }
    rc = replay_run(&a, live, l, kv_dir, base, print);
done:
    if (l)
        slog_close(l);
    if (base)
        event_base_free(base);
    if (tmp[0])
        flow_remove_tree(tmp);
    return rc;
}
