/* stream.c - streams: capturing routed messages into their logs, PubAcks,
 * deduplication, expected-sequence checks, and the admin view (see stream.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "dead_letter.h"
#include "dlq.h"
#include "json_int.h"
#include "log.h"
#include "proto.h"
#include "stream_internal.h"
#include "subject.h"
#include "util.h"
#include "vfs.h"

void streams_buf_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = *cap - *len;
        va_start(ap, fmt);
        int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (*buf && (size_t)n < room) {
            *len += (size_t)n;
            return;
        }
        size_t nc = *cap ? *cap * 2 : 4096;
        while (nc < *len + (size_t)n + 1)
            nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return;
        *buf = nb;
        *cap = nc;
    }
}

stream_t *streams_find(streams_t *sm, const char *name, size_t len)
{
    for (int i = 0; i < sm->n; i++)
        if (strlen(sm->streams[i]->cfg.name) == len && !memcmp(sm->streams[i]->cfg.name, name, len))
            return sm->streams[i];
    return NULL;
}

int streams_count(const streams_t *sm) { return sm ? sm->n : 0; }

const char *streams_dir(const streams_t *sm) { return sm->dir; }

const stream_cfg_t *streams_stream_info(streams_t *sm, const char *name, int i, stream_info_t *out)
{
    stream_t *st = name ? streams_find(sm, name, strlen(name)) : i >= 0 && i < sm->n ? sm->streams[i] : NULL;
    if (!st)
        return NULL;
    if (out) {
        out->cfg = &st->cfg;
        slog_get_info(st->log, &out->log);
        out->nconsumers = st->ncons;
    }
    return &st->cfg;
}

const consumer_cfg_t *streams_consumer_info(streams_t *sm, const char *stream, int i, consumer_info_t *out)
{
    consumer_t *c = NULL;
    if (stream) {
        stream_t *st = streams_find(sm, stream, strlen(stream));
        if (st && i >= 0 && i < st->ncons)
            c = st->cons[i];
    } else if (i >= 0 && i < sm->nc) {
        c = sm->consumers[i];
    }
    if (!c)
        return NULL;
    if (out) {
        consumer_get_info(c, out);
        out->handlers = 0;
        for (int b = 0; b < sm->nbound; b++)
            if (!strcmp(sm->bound[b], out->cfg->name)) {
                out->handlers = sm->bound_batch[b] > 0;
                break;
            }
    }
    return consumer_cfg(c);
}

int streams_read(streams_t *sm, const char *stream, uint64_t seq, slog_rec_t *out, char **buf, size_t *cap)
{
    stream_t *st = streams_find(sm, stream, strlen(stream));
    return st ? slog_read(st->log, seq, out, buf, cap) : -1;
}

int streams_call_handlers(streams_t *sm, const char *stream, const char *consumer, const proto_msg_t *m,
                          uint64_t seq, stream_verdict_t *v)
{
    if (!sm->hooks.handle)
        return -1;
    if (!m)
        return 0;
    uint32_t deliveries = 1;
    sm->hooks.handle(sm->hooks.ctx, stream, consumer, m, &seq, &deliveries, 1, v);
    return 0;
}

void streams_set_hooks(streams_t *sm, const stream_hooks_t *hooks)
{
    if (hooks)
        sm->hooks = *hooks;
    else
        memset(&sm->hooks, 0, sizeof sm->hooks);
}

void streams_bind(streams_t *sm, const char *consumer, int batch, double wait)
{
    int i;
    for (i = 0; i < sm->nbound && strcmp(sm->bound[i], consumer); i++)
        ;
    if (i == sm->nbound) {
        if (!batch || sm->nbound == CONSUMERS_MAX)
            goto apply;
        snprintf(sm->bound[sm->nbound++], STREAM_NAME_MAX, "%s", consumer);
    }
    sm->bound_batch[i] = batch;
    sm->bound_wait[i] = wait;
apply:
    for (int k = 0; k < sm->nc; k++)
        if (!strcmp(consumer_cfg(sm->consumers[k])->name, consumer))
            consumer_bind(sm->consumers[k], batch, wait);
}

/* ---- PubAcks ---------------------------------------------------------------- */

static void reply_to(streams_t *sm, const char *reply, size_t rlen, const char *body, size_t blen)
{
    proto_msg_t r;
    memset(&r, 0, sizeof r);
    r.subject = reply;
    r.subject_len = rlen;
    r.payload = body;
    r.payload_len = blen;
    server_route_flags(sm->srv, NULL, &r, ROUTE_NO_CAPTURE);
}

static void puback(stream_t *st, const char *reply, size_t rlen, uint64_t seq, int duplicate)
{
    char b[200];
    int n = snprintf(b, sizeof b, "{\"stream\":\"%s\",\"seq\":%" PRIu64 "%s}", st->cfg.name, seq,
                     duplicate ? ",\"duplicate\":true" : "");
    reply_to(st->sm, reply, rlen, b, (size_t)n);
}

/* The JetStream error shape: {"error":{"code":400,"err_code":10071,"description":"..."}} */
static void puback_error(stream_t *st, const char *reply, size_t rlen, int code, int err_code, const char *fmt, ...)
{
    char d[300], esc[700], b[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d, sizeof d, fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (const char *p = d; *p && o + 2 < sizeof esc; p++) {
        if (*p == '"' || *p == '\\')
            esc[o++] = '\\';
        esc[o++] = (unsigned char)*p < 0x20 ? ' ' : *p;
    }
    esc[o] = 0;
    int n = snprintf(b, sizeof b, "{\"error\":{\"code\":%d,\"err_code\":%d,\"description\":\"%s\"},\"stream\":\"%s\"}",
                     code, err_code, esc, st->cfg.name);
    if (reply)
        reply_to(st->sm, reply, rlen, b, (size_t)n);
}

static void on_commit(void *ctx, uint64_t seq, int err)
{
    stream_t *st = ctx;
    while (st->alen) {
        pending_ack_t *a = &st->acks[st->ahead];
        if (a->seq <= seq)
            puback(st, a->reply, a->reply_len, a->seq, a->duplicate);
        else if (err)
            puback_error(st, a->reply, a->reply_len, 503, 10077, "stream %s: storing failed: %s", st->cfg.name,
                         strerror(err));
        else
            break;
        free(a->reply);
        st->ahead = (st->ahead + 1) % st->acap;
        st->alen--;
    }
    if (err) {
        st->store_errors++;
        if (st->last_appended > seq) { /* records after seq are gone: not stored after all */
            uint64_t lost = st->last_appended - seq;
            st->stored -= lost < st->stored ? lost : st->stored;
            st->last_appended = seq;
        }
    }
    for (int i = 0; i < st->ncons; i++)
        consumer_pump(st->cons[i]);
    /* Handler acks anywhere may have waited for these records. */
    for (int i = 0; i < st->sm->nc; i++)
        if (consumer_has_deferred(st->sm->consumers[i]))
            consumer_pump(st->sm->consumers[i]);
}

static int push_ack(stream_t *st, uint64_t seq, const char *reply, size_t rlen, int duplicate)
{
    if (st->alen == st->acap) {
        size_t nc = st->acap ? st->acap * 2 : 256;
        pending_ack_t *na = malloc(nc * sizeof *na);
        if (!na)
            return -1;
        for (size_t i = 0; i < st->alen; i++)
            na[i] = st->acks[(st->ahead + i) % st->acap];
        free(st->acks);
        st->acks = na;
        st->acap = nc;
        st->ahead = 0;
    }
    char *r = util_mem_dup(reply, rlen);
    if (!r)
        return -1;
    st->acks[(st->ahead + st->alen++) % st->acap] = (pending_ack_t){seq, r, rlen, duplicate};
    return 0;
}

/* ---- capture ---------------------------------------------------------------- */

#define LUA_NOREF_VALUE (-2) /* LUA_NOREF, without lua.h here */

static size_t dedup_key_std(const proto_msg_t *m, char *out, size_t n);

static int header_u64(const proto_msg_t *m, const char *name, uint64_t *out)
{
    size_t vl;
    const char *v = m->hdr ? proto_header_find(m->hdr, m->hdr_len, name, &vl) : NULL;
    if (!v)
        return 0;
    char b[32];
    if (vl == 0 || vl >= sizeof b)
        return -1;
    memcpy(b, v, vl);
    b[vl] = 0;
    char *end;
    *out = strtoull(b, &end, 10);
    return *end ? -1 : 1;
}

/* The dedup key: Nats-Msg-Id, else the CloudEvents source and id (from
 * ce-* headers or a JSON envelope), else what the stream's dedup_key
 * function says.  Returns its length (0: none). */
static size_t dedup_key(stream_t *st, const proto_msg_t *m, char *out, size_t n)
{
    size_t k = dedup_key_std(m, out, n);
    if (k || !st->sm->hooks.dedup_key || st->cfg.dedup_fn_ref == LUA_NOREF_VALUE)
        return k;
    k = st->sm->hooks.dedup_key(st->sm->hooks.ctx, st->cfg.name, m, out + 4, n - 4);
    if (!k)
        return 0;
    memcpy(out, "fn:", 3); /* its own space: it never equals a Msg-Id by chance */
    out[3] = '\x1f';
    return k + 4;
}

static size_t dedup_key_std(const proto_msg_t *m, char *out, size_t n)
{
    size_t vl, sl;
    const char *v, *s;
    /* A dead letter is its own message, whatever ids the event carries. */
    if (m->hdr && (v = proto_header_find(m->hdr, m->hdr_len, DEAD_LETTER_ID_HEADER, &vl)) && vl && vl + 3 < n) {
        int k = snprintf(out, n, "dl\x1f%.*s", (int)vl, v);
        return (size_t)k;
    }
    if (m->hdr && (v = proto_header_find(m->hdr, m->hdr_len, "Nats-Msg-Id", &vl)) && vl && vl < n) {
        memcpy(out, v, vl);
        return vl;
    }
    if (m->hdr && (v = proto_header_find(m->hdr, m->hdr_len, "ce-id", &vl)) &&
        (s = proto_header_find(m->hdr, m->hdr_len, "ce-source", &sl)) && vl + sl + 5 < n) {
        int k = snprintf(out, n, "ce:%.*s\x1f%.*s", (int)sl, s, (int)vl, v);
        return (size_t)k;
    }
    if (m->payload_len < 2 || m->payload[0] != '{' || m->payload_len > 1048576 ||
        !memmem(m->payload, m->payload_len, "\"specversion\"", 13))
        return 0;
    cJSON *j = cJSON_ParseWithLength(m->payload, m->payload_len);
    size_t k = 0;
    if (j) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(j, "source");
        if (cJSON_IsString(id) && cJSON_IsString(src)) {
            int w = snprintf(out, n, "ce:%s\x1f%s", src->valuestring, id->valuestring);
            k = w > 0 && (size_t)w < n ? (size_t)w : 0;
        }
        cJSON_Delete(j);
    }
    return k;
}

/* A sealed stream, max_msg_size, and discard "new" past max_msgs / max_bytes: 1 when m is
 * refused (and its reply subject told why, as nats-server says it). */
static int store_refuse_limits(stream_t *st, const proto_msg_t *m)
{
    size_t size = (m->hdr ? m->hdr_len : 0) + m->payload_len;
    const char *why = NULL;
    int code = 400, err_code = 10054;
    if (st->cfg.sealed) {
        why = "invalid operation on sealed stream", err_code = 10109;
    } else if (st->cfg.max_msg_size && size > st->cfg.max_msg_size) {
        why = "message size exceeds maximum allowed";
    } else if (st->cfg.discard_new && (st->cfg.o.max_msgs || st->cfg.o.max_bytes)) {
        slog_info_t in;
        slog_get_info(st->log, &in);
        code = 503, err_code = 10077;
        if (st->cfg.o.max_msgs && in.msgs >= st->cfg.o.max_msgs)
            why = "maximum messages exceeded";
        else if (st->cfg.o.max_bytes && in.bytes + size + m->subject_len > st->cfg.o.max_bytes)
            why = "maximum bytes exceeded";
    }
    if (!why)
        return 0;
    st->conflicts++;
    puback_error(st, m->reply, m->reply_len, code, err_code, "%s", why);
    return 1;
}

/* Nats-Expected-Last-Sequence, Nats-Expected-Last-Subject-Sequence and
 * Nats-Rollup: 1 when m is refused (and its reply subject told why, as
 * nats-server says it). */
static int store_refuse_headers(stream_t *st, const proto_msg_t *m)
{
    uint64_t want = 0, last = 0;
    char why[160];
    int h = header_u64(m, "Nats-Expected-Last-Sequence", &want);
    if (h && ((last = slog_last(st->log, NULL)), h < 0 || want != last))
        goto wrong_last;
    h = header_u64(m, "Nats-Expected-Last-Subject-Sequence", &want);
    if (h && ((last = slog_subject_last(st->log, m->subject, m->subject_len)), h < 0 || want != last))
        goto wrong_last;
    if (stream_subjects_check_rollup(st, m, why, sizeof why) < 0) {
        st->conflicts++;
        puback_error(st, m->reply, m->reply_len, 500, 10111, "%s", why);
        return 1;
    }
    return 0;
wrong_last:
    st->conflicts++;
    puback_error(st, m->reply, m->reply_len, 400, 10071, "wrong last sequence: %" PRIu64, last);
    return 1;
}

/* Stores m in st (or refuses it, answering its reply subject either way).
 * Returns a CAPTURE_* code. */
static int store_msg(stream_t *st, const proto_msg_t *m)
{
    const char *reply = m->reply;
    size_t rlen = m->reply_len;
    slog_t *l = st->log;
    size_t vl;
    const char *v;

    if (m->hdr && (v = proto_header_find(m->hdr, m->hdr_len, "Nats-Expected-Stream", &vl)) &&
        (vl != strlen(st->cfg.name) || memcmp(v, st->cfg.name, vl))) {
        st->conflicts++;
        puback_error(st, reply, rlen, 400, 10060, "expected stream does not match");
        return CAPTURE_CONFLICT;
    }
    if (store_refuse_limits(st, m))
        return CAPTURE_CONFLICT;
    char key[1024];
    size_t klen = st->cfg.o.dedup_window > 0 ? dedup_key(st, m, key, sizeof key) : 0;
    uint64_t dup;
    if (klen && (dup = slog_dedup_find(l, key, klen))) {
        st->duplicates++;
        if (!reply)
            return CAPTURE_DUPLICATE;
        /* The first copy may not be durable yet: the repeat is answered
         * when (and as) the first one is. */
        if (dup <= slog_committed(l))
            puback(st, reply, rlen, dup, 1);
        else if (push_ack(st, dup, reply, rlen, 1) < 0)
            puback_error(st, reply, rlen, 503, 10077, "stream %s: out of memory", st->cfg.name);
        return CAPTURE_DUPLICATE;
    }
    if (store_refuse_headers(st, m))
        return CAPTURE_CONFLICT;
    slog_rec_t r = {0};
    r.subject = m->subject;
    r.subject_len = m->subject_len;
    r.key = key;
    r.key_len = klen;
    r.hdr = m->hdr;
    r.hdr_len = m->hdr ? m->hdr_len : 0;
    r.payload = m->payload;
    r.payload_len = m->payload_len;
    uint64_t seq = slog_append(l, &r);
    if (!seq) {
        /* Said once per outage (a publish without a reply hears nothing):
         * the rest are counted in store_errors. */
        int e = errno;
        if (!st->refusing++)
            log_error("stream %s: storing failed (%s): publishes are refused until the log works again", st->cfg.name,
                      strerror(e));
        st->store_errors++;
        puback_error(st, reply, rlen, 503, 10077, "stream %s: storing failed: %s", st->cfg.name, strerror(e));
        return CAPTURE_FAILED;
    }
    if (st->refusing) {
        log_info("stream %s: storing again, after %" PRIu64 " publish%s refused", st->cfg.name, st->refusing,
                 st->refusing == 1 ? "" : "es");
        st->refusing = 0;
    }
    st->stored++;
    st->last_appended = seq;
    stream_subjects_added(st, m, seq);
    stream_retention_stored(st, m, seq);
    if (reply && push_ack(st, seq, reply, rlen, 0) < 0)
        log_error("stream %s: out of memory: the PubAck for sequence %" PRIu64 " is lost", st->cfg.name, seq);
    return CAPTURE_STORED;
}

static int capture(void *ctx, const proto_msg_t *m)
{
    streams_t *sm = ctx;
    if (m->subject_len > 4 && !memcmp(m->subject, "$JS.", 4))
        return 0;
    for (int i = 0; i < sm->n; i++) {
        stream_t *st = sm->streams[i];
        for (int k = 0; k < st->cfg.nsubjects; k++)
            if (subject_matches(st->cfg.subjects[k], strlen(st->cfg.subjects[k]), m->subject, m->subject_len))
                return store_msg(st, m);
    }
    return 0;
}

/* ---- the manager ------------------------------------------------------------ */

static int remove_tree(const char *dir);

streams_t *streams_new(server_t *srv, const char *data_dir)
{
    streams_t *sm = calloc(1, sizeof *sm);
    if (!sm || !(sm->dir = strdup(data_dir))) {
        free(sm);
        return NULL;
    }
    sm->srv = srv;
    sm->base = server_base(srv);
    /* What memory streams left when the process was killed: gone at a
     * restart, as the streams themselves are. */
    char mem[4200];
    snprintf(mem, sizeof mem, "%s/memory", sm->dir);
    if (remove_tree(mem) < 0)
        log_warn("streams: cannot delete %s: %s", mem, strerror(errno));
    sm->ack_sub = server_subscribe_internal(srv, "$JS.ACK.>", consumers_on_ack, sm);
    if (sm->ack_sub)
        sm->ack_sub->flags |= SUB_RESPONDER; /* an ack sent as a request (AckSync) gets its answer */
    sm->fc_sub = server_subscribe_internal(srv, "$JS.FC.>", consumers_on_flow_control, sm);
    server_set_capture(srv, capture, sm);
    return sm;
}

static void stream_close(stream_t *st)
{
    streams_t *sm = st->sm;
    for (int i = 0; i < st->ncons; i++) {
        for (int k = 0; k < sm->nc; k++)
            if (sm->consumers[k] == st->cons[i])
                sm->consumers[k] = sm->consumers[--sm->nc];
        consumer_close(st->cons[i]);
    }
    st->ncons = 0;
    slog_close(st->log); /* writes and syncs what was buffered */
    on_commit(st, UINT64_MAX, 0);
    stream_subjects_free(st);
    if (st->cfg.memory && remove_tree(st->dir) < 0)
        log_warn("stream %s: cannot delete %s: %s", st->cfg.name, st->dir, strerror(errno));
    for (size_t i = 0; i < st->alen; i++)
        free(st->acks[(st->ahead + i) % st->acap].reply);
    free(st->acks);
    stream_cfg_free(&st->cfg);
    free(st);
}

void streams_free(streams_t *sm)
{
    if (!sm)
        return;
    for (int i = 0; i < sm->n; i++)
        stream_close(sm->streams[i]);
    server_set_capture(sm->srv, NULL, NULL);
    free(sm->rbuf);
    free(sm->dir);
    free(sm);
}

static stream_t *stream_open(streams_t *sm, const stream_cfg_t *cfg, char *err, size_t errsz)
{
    stream_t *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    st->sm = sm;
    st->cfg = *cfg;
    st->cfg.nsubjects = 0;
    for (int i = 0; i < cfg->nsubjects; i++)
        if ((st->cfg.subjects[i] = strdup(cfg->subjects[i])))
            st->cfg.nsubjects++;
    snprintf(st->dir, sizeof st->dir, "%s/%s/%s", sm->dir, cfg->memory ? "memory" : "streams", cfg->name);
    if (cfg->memory && remove_tree(st->dir) < 0) /* a memory stream starts empty */
        log_warn("stream %s: cannot empty %s: %s", cfg->name, st->dir, strerror(errno));
    if (util_mkdirs(st->dir) < 0) {
        snprintf(err, errsz, "stream '%s': cannot create %s: %s", cfg->name, st->dir, strerror(errno));
        stream_cfg_free(&st->cfg);
        free(st);
        return NULL;
    }
    char e[512];
    st->log = slog_open(st->dir, &cfg->o, sm->base, on_commit, st, &st->opened, e, sizeof e);
    if (!st->log) {
        snprintf(err, errsz, "stream '%s': %s", cfg->name, e);
        stream_cfg_free(&st->cfg);
        free(st);
        return NULL;
    }
    slog_info_t in;
    slog_get_info(st->log, &in);
    const slog_report_t *r = &st->opened;
    if (r->corrupt || r->torn_bytes)
        log_warn("stream %s: recovered %" PRIu64 " records; skipped %" PRIu64 " damaged record%s (%" PRIu64
                 " bytes), cut a torn tail of %" PRIu64 " bytes", cfg->name, r->records, r->corrupt,
                 r->corrupt == 1 ? "" : "s", r->corrupt_bytes, r->torn_bytes);
    if (r->no_checkpoint)
        log_info("stream %s: %" PRIu64 " segment%s without a checkpoint scanned in full", cfg->name,
                 r->no_checkpoint, r->no_checkpoint == 1 ? "" : "s");
    log_info("stream %s: %" PRIu64 " messages, sequences %" PRIu64 "..%" PRIu64 " (%" PRIu64
             " segment%s, %" PRIu64 " from checkpoints, %" PRIu64 " bytes scanned, in %.3f s), fsync %s", cfg->name,
             in.msgs, in.first_seq, in.last_seq, r->segments, r->segments == 1 ? "" : "s", r->checkpoints,
             r->scanned_bytes, r->seconds,
             cfg->o.fsync == FSYNC_ALWAYS ? "always" : cfg->o.fsync == FSYNC_INTERVAL ? "interval" : "never");
    stream_subjects_sync(st);
    return st;
}

/* Gives a stream that stays declared the settings it has now: subjects,
 * limits, dedup function. */
static void stream_reconfigure(stream_t *st, const stream_cfg_t *cfg)
{
    int same = st->cfg.nsubjects == cfg->nsubjects;
    for (int k = 0; same && k < cfg->nsubjects; k++)
        same = !strcmp(st->cfg.subjects[k], cfg->subjects[k]);
    if (!same) {
        char *subjects[STREAM_SUBJECTS_MAX];
        int ok = 1;
        for (int k = 0; k < cfg->nsubjects; k++)
            ok &= (subjects[k] = strdup(cfg->subjects[k])) != NULL;
        if (ok) {
            stream_cfg_free(&st->cfg);
            memcpy(st->cfg.subjects, subjects, sizeof(char *) * (size_t)cfg->nsubjects);
            st->cfg.nsubjects = cfg->nsubjects;
            log_info("stream %s: subjects changed", st->cfg.name);
        } else {
            for (int k = 0; k < cfg->nsubjects; k++)
                free(subjects[k]);
            log_error("stream %s: out of memory changing its subjects", st->cfg.name);
        }
    }
    st->cfg.dedup_fn_ref = cfg->dedup_fn_ref;
    st->cfg.api = cfg->api;
    st->cfg.max_msg_size = cfg->max_msg_size;
    st->cfg.discard_new = cfg->discard_new;
    int resync = st->cfg.max_msgs_per_subject != cfg->max_msgs_per_subject || st->cfg.allow_rollup != cfg->allow_rollup;
    st->cfg.max_msgs_per_subject = cfg->max_msgs_per_subject;
    st->cfg.retention = cfg->retention;
    st->cfg.allow_rollup = cfg->allow_rollup;
    st->cfg.sealed = cfg->sealed;
    if (resync)
        stream_subjects_sync(st);
    if (!cfg->api)
        snprintf(st->cfg.where, sizeof st->cfg.where, "%s", cfg->where);
    slog_set_limits(st->log, &cfg->o);
    st->cfg.o.max_msgs = cfg->o.max_msgs;
    st->cfg.o.max_bytes = cfg->o.max_bytes;
    st->cfg.o.max_age = cfg->o.max_age;
}

/* Stops the streams no longer declared (their files stay). */
static void streams_close_undeclared(streams_t *sm, const stream_cfg_t *scfg, int ns)
{
    for (int i = 0; i < sm->n;) {
        int keep = sm->streams[i]->cfg.api;
        for (int k = 0; k < ns; k++)
            keep |= !strcmp(scfg[k].name, sm->streams[i]->cfg.name);
        if (keep) {
            i++;
            continue;
        }
        log_info("stream %s: no longer declared; stopped (its files are kept)", sm->streams[i]->cfg.name);
        stream_close(sm->streams[i]);
        sm->streams[i] = sm->streams[--sm->n];
    }
}

/* Stops the consumers no longer declared (their state stays). */
static void consumers_close_undeclared(streams_t *sm, const consumer_cfg_t *ccfg, int nc)
{
    for (int i = 0; i < sm->nc;) {
        consumer_t *c = sm->consumers[i];
        const consumer_cfg_t *old = consumer_cfg(c);
        int keep = old->api; /* the API's: not the entry file's to stop */
        for (int k = 0; k < nc; k++)
            keep |= !strcmp(ccfg[k].name, old->name) && !strcmp(ccfg[k].stream, old->stream);
        if (keep) {
            i++;
            continue;
        }
        stream_t *st = streams_find(sm, old->stream, strlen(old->stream));
        if (st)
            for (int k = 0; k < st->ncons; k++)
                if (st->cons[k] == c)
                    st->cons[k] = st->cons[--st->ncons];
        log_info("consumer %s: no longer declared; stopped (its state is kept)", old->name);
        consumer_close(c);
        sm->consumers[i] = sm->consumers[--sm->nc];
    }
}

/* Updates a declared consumer that runs, or opens it (a failure is logged:
 * the streams are already swapped in by then). */
static void streams_apply_consumer(streams_t *sm, const consumer_cfg_t *cfg)
{
    consumer_t *c = NULL;
    for (int k = 0; k < sm->nc && !c; k++)
        if (!strcmp(consumer_cfg(sm->consumers[k])->name, cfg->name) &&
            (!consumer_cfg(sm->consumers[k])->api || !strcmp(consumer_cfg(sm->consumers[k])->stream, cfg->stream)))
            c = sm->consumers[k];
    if (c && consumer_cfg(c)->api) {
        log_error("%s: consumer %s: one of that name was made on stream %s through the JetStream API; delete it "
                  "there first", cfg->where, cfg->name, cfg->stream);
        return;
    }
    if (c) {
        consumer_update(c, cfg);
        return;
    }
    stream_t *st = streams_find(sm, cfg->stream, strlen(cfg->stream));
    char e[512];
    if (sm->nc == CONSUMERS_MAX || st->ncons == CONSUMERS_MAX) {
        log_error("consumer %s: too many consumers", cfg->name);
        return;
    }
    if (!(c = consumer_open(sm, st, cfg, e, sizeof e))) {
        log_error("consumer %s: %s", cfg->name, e);
        return;
    }
    sm->consumers[sm->nc++] = c;
    st->cons[st->ncons++] = c;
    for (int b = 0; b < sm->nbound; b++)
        if (!strcmp(sm->bound[b], cfg->name))
            consumer_bind(c, sm->bound_batch[b], sm->bound_wait[b]);
    consumer_pump(c);
}

/* On a workqueue stream, consumer ccfg[i] must deliver all and may not
 * overlap a consumer declared before it on the same stream.  0, or -1 with
 * err. */
static int workqueue_declared_conflict(const stream_cfg_t *s, const consumer_cfg_t *ccfg, int i, char *err,
                                       size_t errsz)
{
    char why[128];
    int code;
    if (s->retention != RETENTION_WORKQUEUE)
        return 0;
    if (ccfg[i].deliver_policy != DELIVER_ALL) {
        snprintf(err, errsz, "%s: consumer '%s': consumer must be deliver all on workqueue stream '%s'", ccfg[i].where,
                 ccfg[i].name, s->name);
        return -1;
    }
    for (int k = 0; k < i; k++)
        if (!strcmp(ccfg[k].stream, s->name) &&
            stream_workqueue_filters_conflict(ccfg[i].filter, ccfg[k].filter, &code, why, sizeof why) < 0) {
            snprintf(err, errsz, "%s: consumer '%s': %s '%s' (consumer '%s' takes the same messages)", ccfg[i].where,
                     ccfg[i].name, why, s->name, ccfg[k].name);
            return -1;
        }
    return 0;
}

int streams_apply(streams_t *sm, const stream_cfg_t *scfg, int ns, const consumer_cfg_t *ccfg, int nc, char *err,
                  size_t errsz)
{
    /* Check first, so that a bad declaration changes nothing. */
    for (int i = 0; i < nc; i++) {
        int found = -1;
        for (int k = 0; k < ns; k++)
            if (!strcmp(scfg[k].name, ccfg[i].stream))
                found = k;
        if (found < 0) {
            snprintf(err, errsz, "%s: consumer '%s': no stream '%s' is declared", ccfg[i].where, ccfg[i].name,
                     ccfg[i].stream);
            return -1;
        }
        if (workqueue_declared_conflict(&scfg[found], ccfg, i, err, errsz) < 0)
            return -1;
    }
    stream_t *opened[STREAMS_MAX];
    int nopened = 0;
    for (int i = 0; i < ns; i++) {
        if (streams_find(sm, scfg[i].name, strlen(scfg[i].name)))
            continue;
        if (sm->n + nopened >= STREAMS_MAX) {
            snprintf(err, errsz, "at most %d streams", STREAMS_MAX);
            goto undo;
        }
        if (!(opened[nopened] = stream_open(sm, &scfg[i], err, errsz)))
            goto undo;
        nopened++;
    }
    streams_close_undeclared(sm, scfg, ns);
    for (int i = 0; i < nopened; i++)
        sm->streams[sm->n++] = opened[i];
    for (int i = 0; i < ns; i++)
        stream_reconfigure(streams_find(sm, scfg[i].name, strlen(scfg[i].name)), &scfg[i]);
    consumers_close_undeclared(sm, ccfg, nc);
    for (int i = 0; i < nc; i++)
        streams_apply_consumer(sm, &ccfg[i]);
    return 0;
undo:
    for (int i = 0; i < nopened; i++)
        stream_close(opened[i]);
    return -1;
}

/* ---- streams made at run time ----------------------------------------------- */

/* The next token of a subject pattern at *p (advanced past it and its dot). */
static size_t next_token(const char **p, const char *end, const char **tok)
{
    const char *dot = memchr(*p, '.', (size_t)(end - *p));
    *tok = *p;
    size_t n = dot ? (size_t)(dot - *p) : (size_t)(end - *p);
    *p = dot ? dot + 1 : end;
    return n;
}

int streams_patterns_overlap(const char *a, const char *b)
{
    const char *pa = a, *pb = b, *ea = a + strlen(a), *eb = b + strlen(b);
    while (pa < ea && pb < eb) {
        const char *ta, *tb;
        size_t na = next_token(&pa, ea, &ta), nb = next_token(&pb, eb, &tb);
        if ((na == 1 && *ta == '>') || (nb == 1 && *tb == '>'))
            return 1;
        if ((na == 1 && *ta == '*') || (nb == 1 && *tb == '*'))
            continue;
        if (na != nb || memcmp(ta, tb, na))
            return 0;
    }
    return pa >= ea && pb >= eb;
}

/* A running stream other than `except` one of whose subjects overlaps one
 * of cfg's, or NULL. */
static stream_t *streams_overlapping(streams_t *sm, const stream_cfg_t *cfg, const stream_t *except)
{
    for (int i = 0; i < sm->n; i++) {
        stream_t *st = sm->streams[i];
        if (st == except)
            continue;
        for (int a = 0; a < st->cfg.nsubjects; a++)
            for (int b = 0; b < cfg->nsubjects; b++)
                if (streams_patterns_overlap(st->cfg.subjects[a], cfg->subjects[b]))
                    return st;
    }
    return NULL;
}

int streams_add(streams_t *sm, const stream_cfg_t *cfg, char *err, size_t errsz)
{
    stream_t *st, *other;
    if (streams_find(sm, cfg->name, strlen(cfg->name))) {
        snprintf(err, errsz, "stream name already in use");
        return STREAMS_EEXIST;
    }
    if ((other = streams_overlapping(sm, cfg, NULL))) {
        snprintf(err, errsz, "subjects overlap with stream %s", other->cfg.name);
        return STREAMS_EOVERLAP;
    }
    if (sm->n >= STREAMS_MAX) {
        snprintf(err, errsz, "at most %d streams", STREAMS_MAX);
        return STREAMS_EFULL;
    }
    if (!(st = stream_open(sm, cfg, err, errsz)))
        return STREAMS_EFAIL;
    st->cfg.api = 1;
    st->cfg.dedup_fn_ref = LUA_NOREF_VALUE;
    sm->streams[sm->n++] = st;
    return 0;
}

/* The running stream called name that streams_add made, or NULL with the
 * reason (*code) and err filled in. */
static stream_t *streams_find_api(streams_t *sm, const char *name, int *code, char *err, size_t errsz)
{
    stream_t *st = streams_find(sm, name, strlen(name));
    if (!st) {
        snprintf(err, errsz, "stream not found");
        *code = STREAMS_ENOENT;
    } else if (!st->cfg.api) {
        snprintf(err, errsz, "stream %s is declared in the entry file (%s): change it there", name, st->cfg.where);
        *code = STREAMS_EDECLARED;
        st = NULL;
    }
    return st;
}

int streams_change(streams_t *sm, const stream_cfg_t *cfg, char *err, size_t errsz)
{
    int code = 0;
    stream_t *st = streams_find_api(sm, cfg->name, &code, err, errsz), *other;
    if (!st)
        return code;
    if ((other = streams_overlapping(sm, cfg, st))) {
        snprintf(err, errsz, "subjects overlap with stream %s", other->cfg.name);
        return STREAMS_EOVERLAP;
    }
    stream_cfg_t c = *cfg;
    c.api = 1;
    c.dedup_fn_ref = LUA_NOREF_VALUE;
    stream_reconfigure(st, &c);
    return 0;
}

/* Deletes dir and everything in it (the files a stream's log keeps there). */
static int remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4400];
    int rc = 0;
    if (!d)
        return errno == ENOENT ? 0 : -1;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            rc |= remove_tree(path);
        else if (vfs_unlink(path) != 0)
            rc = -1;
    }
    closedir(d);
    if (rmdir(dir) != 0)
        rc = -1;
    return rc;
}

int streams_remove(streams_t *sm, const char *name, char *err, size_t errsz)
{
    int code = 0;
    stream_t *st = streams_find_api(sm, name, &code, err, errsz);
    if (!st)
        return code;
    char dir[sizeof st->dir];
    snprintf(dir, sizeof dir, "%s", st->dir);
    for (int i = 0; i < sm->n; i++)
        if (sm->streams[i] == st)
            sm->streams[i] = sm->streams[--sm->n];
    stream_close(st);
    if (remove_tree(dir) < 0) {
        snprintf(err, errsz, "stream %s: cannot delete %s: %s", name, dir, strerror(errno));
        return STREAMS_EFAIL;
    }
    return 0;
}

/* ---- consumers made at run time ---------------------------------------------- */

static consumer_t *consumer_find(streams_t *sm, const char *stream, const char *name)
{
    for (int i = 0; i < sm->nc; i++) {
        const consumer_cfg_t *c = consumer_cfg(sm->consumers[i]);
        if (!strcmp(c->name, name) && !strcmp(c->stream, stream))
            return sm->consumers[i];
    }
    return NULL;
}

int streams_consumer_add(streams_t *sm, const consumer_cfg_t *cfg, char *err, size_t errsz)
{
    stream_t *st = streams_find(sm, cfg->stream, strlen(cfg->stream));
    consumer_cfg_t c = *cfg;
    consumer_t *made;
    c.api = 1;
    if (!st) {
        snprintf(err, errsz, "stream not found");
        return STREAMS_ENOENT;
    }
    if (consumer_find(sm, cfg->stream, cfg->name)) {
        snprintf(err, errsz, "consumer name already in use");
        return STREAMS_EEXIST;
    }
    if (sm->nc == CONSUMERS_MAX || st->ncons == CONSUMERS_MAX) {
        snprintf(err, errsz, "maximum consumers limit reached");
        return STREAMS_EFULL;
    }
    if (!(made = consumer_open(sm, st, &c, err, errsz)))
        return STREAMS_EFAIL;
    sm->consumers[sm->nc++] = made;
    st->cons[st->ncons++] = made;
    consumer_pump(made);
    return 0;
}

int streams_consumer_change(streams_t *sm, const consumer_cfg_t *cfg)
{
    consumer_t *c = consumer_find(sm, cfg->stream, cfg->name);
    if (!c || !consumer_cfg(c)->api)
        return STREAMS_ENOENT;
    consumer_cfg_t n = *cfg;
    n.api = 1;
    n.ephemeral = consumer_cfg(c)->ephemeral;
    consumer_update(c, &n);
    consumer_pump(c);
    return 0;
}

int streams_consumer_remove(streams_t *sm, const char *stream, const char *name, char *err, size_t errsz)
{
    consumer_t *c = consumer_find(sm, stream, name);
    stream_t *st = streams_find(sm, stream, strlen(stream));
    char dir[4096];
    if (!c || !st) {
        snprintf(err, errsz, "consumer not found");
        return STREAMS_ENOENT;
    }
    if (!consumer_cfg(c)->api) {
        snprintf(err, errsz, "consumer %s is declared in the entry file (%s): remove it there", name,
                 consumer_cfg(c)->where);
        return STREAMS_EDECLARED;
    }
    snprintf(dir, sizeof dir, "%s", consumer_dir(c));
    consumer_end_pulls(c, "409 Consumer Deleted");
    for (int k = 0; k < st->ncons; k++)
        if (st->cons[k] == c)
            st->cons[k] = st->cons[--st->ncons];
    for (int k = 0; k < sm->nc; k++)
        if (sm->consumers[k] == c)
            sm->consumers[k] = sm->consumers[--sm->nc];
    consumer_close(c);
    if (dir[0] && remove_tree(dir) < 0) {
        snprintf(err, errsz, "consumer %s: cannot delete %s: %s", name, dir, strerror(errno));
        return STREAMS_EFAIL;
    }
    return 0;
}

int streams_consumer_pull(streams_t *sm, const char *stream, const char *name, const consumer_pull_req_t *req,
                          const char *reply, size_t rlen)
{
    consumer_t *c = consumer_find(sm, stream, name);
    if (!c)
        return STREAMS_ENOENT;
    return consumer_pull(c, req, reply, rlen) < 0 ? STREAMS_EEXIST : 0;
}

const consumer_cfg_t *streams_consumer_find(streams_t *sm, const char *stream, const char *name,
                                            consumer_info_t *out)
{
    consumer_t *c = consumer_find(sm, stream, name);
    if (c && out)
        consumer_get_info(c, out);
    return c ? consumer_cfg(c) : NULL;
}

/* The sequences of st's records below `below` whose subject matches
 * filter, in a malloc'd array of *n (NULL with *n 0 when none; -1 when a
 * read failed). */
static int matching_seqs(stream_t *st, const char *filter, uint64_t below, uint64_t **out, size_t *n)
{
    slog_info_t in;
    slog_rec_t r;
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    slog_get_info(st->log, &in);
    for (uint64_t q = in.first_seq; q <= in.last_seq && (!below || q < below); q++) {
        int got = slog_read(st->log, q, &r, &st->sm->rbuf, &st->sm->rcap);
        if (got < 0)
            return -1;
        if (!got || !subject_matches(filter, strlen(filter), r.subject, r.subject_len))
            continue;
        if (*n == cap) {
            uint64_t *g = realloc(*out, (cap = cap ? cap * 2 : 64) * sizeof *g);
            if (!g)
                return -1;
            *out = g;
        }
        (*out)[(*n)++] = q;
    }
    return 0;
}

/* The sequence below which st holds `keep` records more than it keeps. */
static uint64_t keep_below(stream_t *st, uint64_t keep)
{
    slog_info_t in;
    slog_rec_t r;
    slog_get_info(st->log, &in);
    if (in.last_seq - in.first_seq + 1 == in.msgs) /* no holes */
        return in.last_seq + 1 - keep;
    uint64_t q = in.last_seq + 1;
    for (uint64_t kept = 0; kept < keep && q > in.first_seq;)
        kept += slog_read(st->log, --q, &r, &st->sm->rbuf, &st->sm->rcap) > 0;
    return q;
}

int streams_purge(streams_t *sm, const char *name, const char *filter, uint64_t below, uint64_t keep,
                  uint64_t *purged, char *err, size_t errsz)
{
    stream_t *st = streams_find(sm, name, strlen(name));
    int e = 0;
    *purged = 0;
    if (!st) {
        snprintf(err, errsz, "stream not found");
        return STREAMS_ENOENT;
    }
    slog_info_t in;
    slog_get_info(st->log, &in);
    if (!filter || !filter[0] || !strcmp(filter, ">")) {
        if (keep && keep >= in.msgs)
            return 0;
        *purged = slog_purge(st->log, keep ? keep_below(st, keep) : below ? below : in.last_seq + 1, &e);
    } else {
        uint64_t *seqs = NULL;
        size_t n = 0;
        if (matching_seqs(st, filter, below, &seqs, &n) < 0)
            e = errno ? errno : EIO;
        size_t drop = keep >= n ? 0 : n - (size_t)keep; /* the oldest go, the last `keep` stay */
        int rc = e || !drop ? 0 : slog_delete(st->log, seqs, drop);
        if (rc < 0)
            e = errno ? errno : EIO;
        else
            *purged = (uint64_t)rc;
        free(seqs);
    }
    if (e) {
        snprintf(err, errsz, "stream %s: purge failed: %s", name, strerror(e));
        return STREAMS_EFAIL;
    }
    for (int i = 0; i < st->ncons; i++)
        consumer_pump(st->cons[i]);
    return 0;
}

int streams_delete_msg(streams_t *sm, const char *name, uint64_t seq, char *err, size_t errsz)
{
    stream_t *st = streams_find(sm, name, strlen(name));
    if (!st) {
        snprintf(err, errsz, "stream not found");
        return STREAMS_ENOENT;
    }
    int rc = slog_delete(st->log, &seq, 1);
    if (rc < 0) {
        snprintf(err, errsz, "stream %s: delete failed: %s", name, strerror(errno));
        return STREAMS_EFAIL;
    }
    return rc;
}

int streams_store(streams_t *sm, const char *stream, const proto_msg_t *m, uint64_t *seq)
{
    stream_t *st = streams_find(sm, stream, strlen(stream));
    proto_msg_t q = *m;
    q.reply = NULL; /* nobody waits for a PubAck */
    q.reply_len = 0;
    int rc = st ? store_msg(st, &q) : CAPTURE_NONE;
    if (rc == CAPTURE_STORED)
        *seq = st->last_appended;
    return rc;
}

int streams_subjects_each(streams_t *sm, const char *stream, const char *prefix, size_t plen,
                          void (*fn)(void *ctx, const char *subject, size_t len, uint64_t seq), void *ctx)
{
    stream_t *st = streams_find(sm, stream, strlen(stream));
    return st ? slog_each_subject(st->log, prefix, plen, fn, ctx) : -1;
}

uint64_t streams_subject_last(streams_t *sm, const char *stream, const char *subject, size_t len)
{
    stream_t *st = streams_find(sm, stream, strlen(stream));
    return st ? slog_subject_last(st->log, subject, len) : 0;
}

/* ---- the admin view --------------------------------------------------------- */

static cJSON *stream_obj(stream_t *st)
{
    slog_info_t in;
    slog_get_info(st->log, &in);
    cJSON *o = cJSON_CreateObject(), *subj = cJSON_AddArrayToObject(o, "subjects");
    cJSON_AddStringToObject(o, "name", st->cfg.name);
    for (int i = 0; i < st->cfg.nsubjects; i++)
        cJSON_AddItemToArray(subj, cJSON_CreateString(st->cfg.subjects[i]));
    cJSON_AddStringToObject(o, "fsync", st->cfg.o.fsync == FSYNC_ALWAYS     ? "always"
                                        : st->cfg.o.fsync == FSYNC_INTERVAL ? "interval"
                                                                            : "never");
    json_add_uint(o, "messages", in.msgs);
    json_add_uint(o, "bytes", in.bytes);
    json_add_uint(o, "first_seq", in.first_seq);
    json_add_uint(o, "last_seq", in.last_seq);
    json_add_uint(o, "committed_seq", in.committed_seq);
    char t[64];
    if (in.msgs) {
        util_time_ns(in.first_ts, t, sizeof t);
        cJSON_AddStringToObject(o, "first_time", t);
        util_time_ns(in.last_ts, t, sizeof t);
        cJSON_AddStringToObject(o, "last_time", t);
    }
    json_add_uint(o, "segments", in.segments);
    json_add_uint(o, "consumers", (uint64_t)st->ncons);
    json_add_uint(o, "stored", st->stored);
    json_add_uint(o, "duplicates", st->duplicates);
    json_add_uint(o, "conflicts", st->conflicts);
    json_add_uint(o, "store_errors", st->store_errors);
    json_add_uint(o, "syncs", in.syncs);
    json_add_uint(o, "sync_errors", in.sync_errors);
    json_add_uint(o, "write_errors", in.write_errors);
    cJSON_AddBoolToObject(o, "failed", in.failed);
    cJSON *rec = cJSON_AddObjectToObject(o, "recovery");
    json_add_uint(rec, "records", st->opened.records);
    json_add_uint(rec, "corrupt_records", st->opened.corrupt);
    json_add_uint(rec, "corrupt_bytes", st->opened.corrupt_bytes);
    json_add_uint(rec, "torn_bytes", st->opened.torn_bytes);
    cJSON_AddNumberToObject(rec, "seconds", st->opened.seconds);
    json_add_uint(rec, "checkpoints", st->opened.checkpoints);
    json_add_uint(rec, "checkpoint_bytes", st->opened.checkpoint_bytes);
    json_add_uint(rec, "scanned_bytes", st->opened.scanned_bytes);
    json_add_uint(rec, "checkpoint_missing", st->opened.no_checkpoint);
    json_add_uint(rec, "checkpoint_fallbacks", st->opened.fallbacks);
    if (st->opened.fallback[0])
        cJSON_AddStringToObject(rec, "checkpoint_fallback", st->opened.fallback);
    cJSON *io = cJSON_AddObjectToObject(o, "io");
    json_add_uint(io, "reads", in.reads);
    json_add_uint(io, "read_bytes", in.read_bytes);
    json_add_uint(io, "seeks", in.seeks);
    json_add_uint(io, "seek_reads", in.seek_reads);
    json_add_uint(io, "seek_bytes", in.seek_bytes);
    json_add_uint(io, "seek_records", in.seek_records);
    cJSON *lim = cJSON_AddObjectToObject(o, "limits");
    json_add_uint(lim, "max_msgs", st->cfg.o.max_msgs);
    json_add_uint(lim, "max_bytes", st->cfg.o.max_bytes);
    cJSON_AddNumberToObject(lim, "max_age", st->cfg.o.max_age);
    cJSON_AddNumberToObject(lim, "dedup_window", st->cfg.o.dedup_window);
    return o;
}

static char *print(cJSON *o, size_t *len)
{
    char *p = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *out = p ? util_mem_dup(p, strlen(p)) : NULL;
    cJSON_free(p);
    *len = out ? strlen(out) : 0;
    return out;
}

char *streams_json(streams_t *sm, size_t *len)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; sm && i < sm->n; i++)
        cJSON_AddItemToArray(a, stream_obj(sm->streams[i]));
    return print(a, len);
}

char *streams_consumers_json(streams_t *sm, size_t *len)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; sm && i < sm->nc; i++)
        cJSON_AddItemToArray(a, consumer_json(sm->consumers[i]));
    return print(a, len);
}

char *stream_info_json(streams_t *sm, const char *name, size_t *len)
{
    stream_t *st = sm ? streams_find(sm, name, strlen(name)) : NULL;
    return st ? print(stream_obj(st), len) : NULL;
}

/* One header into the JSON object; a repeated header's values become a
 * list, in order. */
static void add_header(void *ctx, const char *n, size_t nl, const char *v, size_t vl)
{
    cJSON *h = ctx;
    char name[256], val[4096];
    snprintf(name, sizeof name, "%.*s", (int)nl, n);
    snprintf(val, sizeof val, "%.*s", (int)vl, v);
    cJSON *had = cJSON_GetObjectItemCaseSensitive(h, name);
    if (!had) {
        cJSON_AddStringToObject(h, name, val);
        return;
    }
    if (!cJSON_IsArray(had)) {
        cJSON *list = cJSON_CreateArray();
        cJSON_AddItemToArray(list, cJSON_CreateString(had->valuestring));
        cJSON_ReplaceItemInObjectCaseSensitive(h, name, list);
        had = list;
    }
    cJSON_AddItemToArray(had, cJSON_CreateString(val));
}

/* Headers of a NATS header block as a JSON object. */
static cJSON *headers_obj(const char *hdr, size_t hl)
{
    cJSON *h = cJSON_CreateObject();
    proto_header_each(hdr, hl, add_header, h);
    return h;
}

void stream_add_payload(cJSON *o, const slog_rec_t *r)
{
    /* JSON goes in as it is stored: through a cJSON tree its numbers would
     * be rounded through doubles. */
    cJSON *data = r->payload_len && (r->payload[0] == '{' || r->payload[0] == '[')
                      ? cJSON_ParseWithLength(r->payload, r->payload_len)
                      : NULL;
    char *raw = data ? util_mem_dup(r->payload, r->payload_len) : NULL;
    cJSON_Delete(data);
    if (raw) {
        cJSON_AddItemToObject(o, "data", cJSON_CreateRaw(raw));
        free(raw);
    } else {
        char *p = util_mem_dup(r->payload, r->payload_len);
        cJSON_AddStringToObject(o, "payload", p ? p : "");
        free(p);
    }
}

static cJSON *record_obj(stream_t *st, const slog_rec_t *r)
{
    cJSON *o = cJSON_CreateObject();
    char t[64];
    cJSON_AddStringToObject(o, "stream", st->cfg.name);
    json_add_uint(o, "seq", r->seq);
    util_time_ns(r->ts, t, sizeof t);
    cJSON_AddStringToObject(o, "time", t);
    char *s = util_mem_dup(r->subject, r->subject_len);
    cJSON_AddStringToObject(o, "subject", s ? s : "");
    free(s);
    if (r->hdr_len)
        cJSON_AddItemToObject(o, "headers", headers_obj(r->hdr, r->hdr_len));
    stream_add_payload(o, r);
    return o;
}

char *stream_get_json(streams_t *sm, const char *name, uint64_t seq, char *err, size_t errsz, size_t *len)
{
    stream_t *st = sm ? streams_find(sm, name, strlen(name)) : NULL;
    if (!st) {
        snprintf(err, errsz, "no stream '%s'", name);
        return NULL;
    }
    slog_rec_t r;
    int rc = slog_read(st->log, seq, &r, &sm->rbuf, &sm->rcap);
    if (rc <= 0) {
        snprintf(err, errsz, rc < 0 ? "stream '%s': cannot read sequence %" PRIu64 ": %s"
                                    : "stream '%s' has no message %" PRIu64 "%s",
                 name, seq, rc < 0 ? strerror(errno) : "");
        return NULL;
    }
    return print(record_obj(st, &r), len);
}

/* The last second (in 2262) whose time in ns since the epoch fits an int64. */
#define TIME_MAX_SECONDS ((int64_t)9223372035)

int64_t streams_parse_time(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest) {
        int64_t frac = util_frac_ns(rest, &rest);
        int64_t off = 0; /* the zone: Z, +hh:mm or -hh:mm */
        if ((*rest == '+' || *rest == '-') && strlen(rest) >= 6 && rest[3] == ':') {
            off = (int64_t)(atoi(rest + 1) * 3600 + atoi(rest + 4) * 60) * (*rest == '-' ? -1 : 1);
            rest += 6;
        } else if (*rest == 'Z' || *rest == 'z') {
            rest++;
        }
        if (*rest)
            return -1;
        int64_t secs = (int64_t)timegm(&tm) - off;
        if (secs < 0 || secs > TIME_MAX_SECONDS)
            return -1; /* before 1970, or past what ns since the epoch can hold */
        return secs * 1000000000 + frac;
    }
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0 && v <= (double)TIME_MAX_SECONDS))
        return -1;
    return (int64_t)(v * 1e9);
}

/* {"stream":..,"subject":pattern,"since":t,"until":t,"from_seq":n,"limit":n}
 * -> {"events":[...],"next_seq":n,"more":bool}: the event-store queries.
 * One answer is a bounded page: at most EVENTS_PAGE events, about
 * EVENTS_BYTES of them, EVENTS_SCAN records looked at (so a request never
 * holds the loop long); "more" says to ask again from next_seq. */
#define EVENTS_PAGE 1000
#define EVENTS_BYTES (512 * 1024)
#define EVENTS_SCAN 100000
/* One page of STREAM.VERIFY: {"stream": name, "from_seq": n} (or the name
 * alone).  A page reads about VERIFY_BYTES or runs VERIFY_SECONDS, so that
 * a check of a big stream never holds the loop long; the caller asks again
 * from next_seq while more is true. */
#define VERIFY_BYTES (32u << 20)
#define VERIFY_SECONDS 0.02
static char *stream_verify_json(streams_t *sm, const char *req, size_t rl, char *err, size_t errsz, size_t *len)
{
    cJSON *q = rl && req[0] == '{' ? json_parse_owned(req, rl) : NULL;
    const cJSON *jn = q ? cJSON_GetObjectItemCaseSensitive(q, "stream") : NULL;
    stream_t *st = NULL;
    uint64_t from = 0;
    if (q)
        st = cJSON_IsString(jn) ? streams_find(sm, jn->valuestring, strlen(jn->valuestring)) : NULL;
    else
        st = streams_find(sm, req, rl);
    if (!st) {
        snprintf(err, errsz, "no such stream");
        cJSON_Delete(q);
        return NULL;
    }
    if (q && json_get_uint_member(q, "from_seq", &from) < 0)
        from = 0;
    cJSON_Delete(q);
    slog_verify_t v;
    int rc = slog_verify(st->log, from, VERIFY_BYTES, VERIFY_SECONDS, &v);
    uint64_t last = slog_last(st->log, NULL);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "stream", st->cfg.name);
    json_add_uint(o, "records", v.records);
    json_add_uint(o, "bytes", v.bytes);
    json_add_uint(o, "missing", v.missing);
    json_add_uint(o, "bad", v.bad);
    cJSON *arr = cJSON_AddArrayToObject(o, "bad_seqs");
    for (int i = 0; i < v.nbad; i++)
        json_append_uint(arr, v.bad_seqs[i]);
    if (rc < 0)
        cJSON_AddStringToObject(o, "error", strerror(errno));
    json_add_uint(o, "next_seq", v.next_seq);
    cJSON_AddBoolToObject(o, "more", rc == 0 && v.next_seq <= last);
    return print(o, len);
}

static char *stream_events_json(streams_t *sm, const char *req, size_t rl, char *err, size_t errsz, size_t *len)
{
    cJSON *q = json_parse_owned(req, rl); /* sequences past 2^53 stay exact */
    const cJSON *jn = q ? cJSON_GetObjectItemCaseSensitive(q, "stream") : NULL;
    stream_t *st = cJSON_IsString(jn) ? streams_find(sm, jn->valuestring, strlen(jn->valuestring)) : NULL;
    if (!st) {
        snprintf(err, errsz, q ? "no such stream" : "the request must be a JSON object with a stream name");
        cJSON_Delete(q);
        return NULL;
    }
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(q, "subject");
    const cJSON *jsince = cJSON_GetObjectItemCaseSensitive(q, "since");
    const cJSON *juntil = cJSON_GetObjectItemCaseSensitive(q, "until");
    const char *pat = cJSON_IsString(js) ? js->valuestring : NULL;
    if (pat && !subject_valid_pattern(pat, strlen(pat))) {
        snprintf(err, errsz, "'%s' is not a valid subject pattern", pat);
        cJSON_Delete(q);
        return NULL;
    }
    int64_t since = cJSON_IsString(jsince) ? streams_parse_time(jsince->valuestring) : 0;
    int64_t until = cJSON_IsString(juntil) ? streams_parse_time(juntil->valuestring) : INT64_MAX;
    if (since < 0 || until < 0) {
        snprintf(err, errsz, "since and until must be RFC 3339 times or seconds since the epoch");
        cJSON_Delete(q);
        return NULL;
    }
    uint64_t limit, from;
    if (json_get_uint_member(q, "limit", &limit) < 0 || limit < 1 || limit > EVENTS_PAGE)
        limit = EVENTS_PAGE;
    slog_info_t in;
    slog_get_info(st->log, &in);
    uint64_t seq = since > 0 ? slog_seq_at_time(st->log, since) : in.first_seq;
    if (json_get_uint_member(q, "from_seq", &from) == 0 && from > seq)
        seq = from;
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "events");
    uint64_t n = 0, scanned = 0;
    size_t bytes = 0;
    int more = 0, ended = 0;
    for (; seq <= in.committed_seq; seq++, scanned++) {
        if (n >= limit || scanned >= EVENTS_SCAN || bytes >= EVENTS_BYTES) {
            more = 1; /* a bounded page: the rest from next_seq */
            break;
        }
        slog_rec_t r;
        if (slog_read(st->log, seq, &r, &sm->rbuf, &sm->rcap) <= 0)
            continue;
        if (r.ts > until) {
            ended = 1;
            break;
        }
        if (pat && !subject_matches(pat, strlen(pat), r.subject, r.subject_len))
            continue;
        cJSON_AddItemToArray(arr, record_obj(st, &r));
        bytes += 160 + r.subject_len + r.hdr_len + r.payload_len * 2; /* about what it prints as */
        n++;
    }
    json_add_uint(o, "next_seq", seq);
    cJSON_AddBoolToObject(o, "more", more && !ended);
    cJSON_Delete(q);
    return print(o, len);
}

void streams_metrics(streams_t *sm, char **buf, size_t *len, size_t *cap)
{
    if (!sm)
        return;
    static const char *const names[][2] = {
        {"tide_stream_messages", "Messages stored in the stream now."},
        {"tide_stream_bytes", "Bytes of records stored in the stream now."},
        {"tide_stream_first_seq", "First sequence stored."},
        {"tide_stream_last_seq", "Last sequence stored."},
        {"tide_stream_stored_total", "Messages appended since start."},
        {"tide_stream_duplicates_total", "Publishes not stored because their dedup key was seen."},
        {"tide_stream_conflicts_total", "Publishes refused by an expected-sequence header."},
        {"tide_stream_store_errors_total", "Publishes refused because storing failed."},
        {"tide_stream_syncs_total", "fdatasync calls made by the stream's sync thread."},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        int counter = strstr(names[k][0], "_total") != NULL;
        streams_buf_printf(buf, len, cap, "# HELP %s %s\n# TYPE %s %s\n", names[k][0], names[k][1], names[k][0],
                   counter ? "counter" : "gauge");
        for (int i = 0; i < sm->n; i++) {
            stream_t *st = sm->streams[i];
            slog_info_t in;
            slog_get_info(st->log, &in);
            uint64_t v[] = {in.msgs, in.bytes, in.first_seq, in.last_seq, st->stored, st->duplicates,
                            st->conflicts, st->store_errors, in.syncs};
            streams_buf_printf(buf, len, cap, "%s{stream=\"%s\"} %" PRIu64 "\n", names[k][0], st->cfg.name, v[k]);
        }
    }
    consumer_metrics(sm->consumers, sm->nc, buf, len, cap);
}

static void reply_err(streams_t *sm, const proto_msg_t *req, const char *err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", err);
    size_t len;
    char *p = print(o, &len);
    if (p && req->reply)
        reply_to(sm, req->reply, req->reply_len, p, len);
    free(p);
}

int streams_admin(streams_t *sm, const char *verb, size_t vlen, const proto_msg_t *req)
{
    if (dlq_admin(sm, verb, vlen, req)) /* DLQ.LS, DLQ.SHOW, DLQ.REPLAY: dlq.c */
        return 1;
#define IS(s) (vlen == strlen(s) && !memcmp(verb, s, vlen))
    char *out = NULL, err[512] = "", name[STREAM_NAME_MAX + 1] = "";
    size_t len = 0;
    if (req->payload_len && req->payload_len <= STREAM_NAME_MAX) {
        memcpy(name, req->payload, req->payload_len);
        name[req->payload_len] = 0;
        for (char *p = name; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == ' ')
                *p = 0;
    }
    if (IS("STREAM.LS")) {
        out = streams_json(sm, &len);
    } else if (IS("CONSUMER.LS")) {
        out = streams_consumers_json(sm, &len);
    } else if (IS("STREAM.INFO")) {
        if (!(out = stream_info_json(sm, name, &len)))
            snprintf(err, sizeof err, "no stream '%s'", name);
    } else if (IS("CONSUMER.INFO")) {
        for (int i = 0; i < sm->nc && !out; i++)
            if (!strcmp(consumer_cfg(sm->consumers[i])->name, name))
                out = print(consumer_json(sm->consumers[i]), &len);
        if (!out)
            snprintf(err, sizeof err, "no consumer '%s'", name);
    } else if (IS("STREAM.GET")) {
        cJSON *q = json_parse_owned(req->payload, req->payload_len);
        const cJSON *s = q ? cJSON_GetObjectItemCaseSensitive(q, "stream") : NULL;
        uint64_t seq;
        if (!cJSON_IsString(s) || json_get_uint_member(q, "seq", &seq) < 0 || seq < 1)
            snprintf(err, sizeof err, "the request must be {\"stream\": name, \"seq\": n}");
        else
            out = stream_get_json(sm, s->valuestring, seq, err, sizeof err, &len);
        cJSON_Delete(q);
    } else if (IS("STREAM.EVENTS")) {
        out = stream_events_json(sm, req->payload, req->payload_len, err, sizeof err, &len);
    } else if (IS("STREAM.VERIFY")) {
        out = stream_verify_json(sm, req->payload, req->payload_len, err, sizeof err, &len);
    } else {
        return 0;
    }
    if (out && req->reply)
        reply_to(sm, req->reply, req->reply_len, out, len);
    else if (!out)
        reply_err(sm, req, err[0] ? err : "out of memory");
    free(out);
    return 1;
#undef IS
}

void stream_cfg_free(stream_cfg_t *c)
{
    for (int i = 0; i < c->nsubjects; i++)
        free(c->subjects[i]);
    c->nsubjects = 0;
}
