/* dlq.c - dead letters: list, show and replay them (see dlq.h).  Reads the
 * streams' internals, never changes them; replays go through server_publish
 * like any publish. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "dead_letter.h"
#include "dlq.h"
#include "json_int.h"
#include "proto.h"
#include "stream_internal.h"
#include "subject.h"
#include "util.h"

/* One answer is a bounded page, so that no request holds the loop long
 * or builds a reply past max_payload: at most PAGE_SHOW dead letters
 * (about PAGE_BYTES of JSON) shown or PAGE_REPLAY replayed, PAGE_SCAN
 * records looked at and PAGE_NS spent; "more" says to ask again from
 * "next_seq". */
#define PAGE_SHOW 1000
#define PAGE_BYTES (512 * 1024)
#define PAGE_REPLAY 256
#define PAGE_SCAN 100000
#define PAGE_NS 20000000 /* 20 ms */

/* ---- what http.c asks ------------------------------------------------------- */

const char *dlq_capturing_stream(streams_t *sm, const char *subject, size_t len)
{
    if (!sm || (len > 4 && !memcmp(subject, "$JS.", 4)))
        return NULL;
    for (int i = 0; i < sm->n; i++) { /* as capture() in stream.c: the first match */
        stream_t *st = sm->streams[i];
        for (int k = 0; k < st->cfg.nsubjects; k++)
            if (subject_matches(st->cfg.subjects[k], strlen(st->cfg.subjects[k]), subject, len))
                return st->cfg.name;
    }
    return NULL;
}

size_t dlq_pending_pubacks(streams_t *sm, const char *prefix, size_t len)
{
    size_t n = 0;
    for (int i = 0; sm && i < sm->n; i++) {
        stream_t *st = sm->streams[i];
        for (size_t k = 0; k < st->alen; k++) {
            const pending_ack_t *a = &st->acks[(st->ahead + k) % st->acap];
            if (a->reply_len >= len && !memcmp(a->reply, prefix, len))
                n++;
        }
    }
    return n;
}

/* ---- helpers ------------------------------------------------------------------ */

static void reply(streams_t *sm, const proto_msg_t *req, cJSON *o)
{
    char *p = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (p && req->reply) {
        proto_msg_t r;
        memset(&r, 0, sizeof r);
        r.subject = req->reply;
        r.subject_len = req->reply_len;
        r.payload = p;
        r.payload_len = strlen(p);
        server_route_flags(sm->srv, NULL, &r, ROUTE_NO_CAPTURE);
    }
    cJSON_free(p);
}

static void reply_err(streams_t *sm, const proto_msg_t *req, const char *err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", err);
    reply(sm, req, o);
}

/* A header's value as a new string (NULL when absent). */
static char *header(const slog_rec_t *r, const char *name)
{
    size_t vl;
    const char *v = r->hdr_len ? proto_header_find(r->hdr, r->hdr_len, name, &vl) : NULL;
    return v ? util_mem_dup(v, vl) : NULL;
}

static void add_own_header(void *ctx, const char *n, size_t nl, const char *v, size_t vl)
{
    cJSON *h = ctx;
    if (dead_letter_is_header(n, nl))
        return;
    char name[256], val[4096];
    snprintf(name, sizeof name, "%.*s", (int)nl, n);
    snprintf(val, sizeof val, "%.*s", (int)vl, v);
    if (!cJSON_GetObjectItemCaseSensitive(h, name))
        cJSON_AddStringToObject(h, name, val);
}

static void add_str(cJSON *o, const char *key, char *v)
{
    if (v)
        cJSON_AddStringToObject(o, key, v);
    free(v);
}

/* A header holding a whole number (a sequence, a count) as that number,
 * exactly; anything else as the string it is. */
static void add_num(cJSON *o, const char *key, char *v)
{
    if (v) {
        size_t n = strlen(v);
        int whole = n && n <= 20 && strspn(v, "0123456789") == n;
        errno = 0;
        uint64_t u = whole ? strtoull(v, NULL, 10) : 0;
        if (whole && errno != ERANGE)
            json_add_uint(o, key, u);
        else
            cJSON_AddStringToObject(o, key, v);
    }
    free(v);
}

/* The JSON of one stored dead letter. */
static cJSON *dead_letter_obj(const slog_rec_t *r)
{
    cJSON *o = cJSON_CreateObject();
    char t[64];
    json_add_uint(o, "seq", r->seq);
    util_time_ns(r->ts, t, sizeof t);
    cJSON_AddStringToObject(o, "time", t);
    add_str(o, "subject", util_mem_dup(r->subject, r->subject_len));
    add_str(o, "original_subject", header(r, "Tide-Original-Subject"));
    char *reason = header(r, "Tide-Reason");
    add_str(o, "reason", reason ? reason : util_mem_dup("script", 6)); /* the pipeline's once had none */
    add_str(o, "stage", header(r, "Tide-Stage"));
    add_str(o, "error", header(r, "Tide-Error"));
    add_num(o, "deliveries", header(r, "Tide-Deliveries"));
    add_str(o, "consumer", header(r, "Tide-Consumer"));
    add_str(o, "source_stream", header(r, "Tide-Stream"));
    add_num(o, "source_seq", header(r, "Tide-Sequence"));
    add_str(o, "script", header(r, "Tide-Script"));
    cJSON *h = cJSON_CreateObject();
    proto_header_each(r->hdr, r->hdr_len, add_own_header, h);
    if (h->child)
        cJSON_AddItemToObject(o, "headers", h);
    else
        cJSON_Delete(h);
    stream_add_payload(o, r);
    return o;
}

static int is_dead_letter(const slog_rec_t *r)
{
    size_t vl;
    return r->hdr_len && proto_header_find(r->hdr, r->hdr_len, "Tide-Original-Subject", &vl) && vl > 0;
}

/* The request's stream: {"stream":S,...} or the bare name.  q gets the
 * parsed object (or NULL), its numbers exact (sequences past 2^53
 * included); NULL with err when there is no such stream. */
static stream_t *find_stream(streams_t *sm, const proto_msg_t *req, cJSON **q, char *err, size_t errsz)
{
    *q = req->payload_len && req->payload[0] == '{' ? json_parse_owned(req->payload, req->payload_len) : NULL;
    char name[STREAM_NAME_MAX + 1] = "";
    if (*q) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(*q, "stream");
        if (cJSON_IsString(s))
            snprintf(name, sizeof name, "%s", s->valuestring);
    } else if (req->payload_len && req->payload_len <= STREAM_NAME_MAX) {
        memcpy(name, req->payload, req->payload_len);
        name[req->payload_len] = 0;
        name[strcspn(name, " \r\n")] = 0;
    }
    if (!name[0]) {
        snprintf(err, errsz, "name a stream: {\"stream\": name} or the name");
        return NULL;
    }
    stream_t *st = streams_find(sm, name, strlen(name));
    if (!st)
        snprintf(err, errsz, "no stream '%s'", name);
    return st;
}

/* The stream a DLQ request names, with the request's JSON in *q (the
 * caller deletes it); or NULL, the error answered and nothing to delete. */
static stream_t *request_stream(streams_t *sm, const proto_msg_t *req, cJSON **q)
{
    char err[300];
    stream_t *st = find_stream(sm, req, q, err, sizeof err);
    if (!st) {
        cJSON_Delete(*q);
        *q = NULL;
        reply_err(sm, req, err);
    }
    return st;
}

/* Whole number key of request q, or dflt. */
static uint64_t num(const cJSON *q, const char *key, uint64_t dflt)
{
    uint64_t v;
    return json_get_uint_member(q, key, &v) == 0 ? v : dflt;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A page's bounds: records looked at and time spent. */
typedef struct page {
    uint64_t scanned;
    int64_t until_ns;
} page_t;

static page_t page_start(void)
{
    page_t p = {0, mono_ns() + PAGE_NS};
    return p;
}

/* Whether the page may look at one more record (the clock is read every
 * 64 records). */
static int page_open(page_t *p)
{
    if (p->scanned >= PAGE_SCAN || ((p->scanned & 63) == 63 && mono_ns() > p->until_ns))
        return 0;
    p->scanned++;
    return 1;
}

/* ---- DLQ.LS --------------------------------------------------------------------- */

static void dlq_ls(streams_t *sm, const proto_msg_t *req)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < sm->nc; i++) {
        const consumer_cfg_t *cfg = consumer_cfg(sm->consumers[i]);
        if (!cfg->dead_letter[0])
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "consumer", cfg->name);
        cJSON_AddStringToObject(o, "stream", cfg->stream);
        cJSON_AddStringToObject(o, "dead_letter", cfg->dead_letter);
        consumer_info_t ci;
        consumer_get_info(sm->consumers[i], &ci);
        json_add_uint(o, "dead_lettered", ci.dead_lettered);
        json_add_uint(o, "dead_letters_lost", ci.dead_letters_lost);
        const char *sn = dlq_capturing_stream(sm, cfg->dead_letter, strlen(cfg->dead_letter));
        stream_t *st = sn ? streams_find(sm, sn, strlen(sn)) : NULL;
        if (st) {
            slog_info_t in;
            slog_get_info(st->log, &in);
            cJSON_AddStringToObject(o, "dlq_stream", st->cfg.name);
            json_add_uint(o, "messages", in.msgs);
        }
        cJSON_AddItemToArray(a, o);
    }
    reply(sm, req, a);
}

/* ---- DLQ.SHOW ------------------------------------------------------------------- */

/* {"stream":S,"limit":n,"from_seq":n} -> {"stream":S,"dead_letters":[...],
 * "next_seq":n,"more":bool}: one page of the dead letters S keeps. */
static void dlq_show(streams_t *sm, const proto_msg_t *req)
{
    cJSON *q;
    stream_t *st = request_stream(sm, req, &q);
    if (!st)
        return;
    uint64_t limit = num(q, "limit", PAGE_SHOW), from = num(q, "from_seq", 0);
    if (limit < 1 || limit > PAGE_SHOW)
        limit = PAGE_SHOW;
    cJSON_Delete(q);
    slog_info_t in;
    slog_get_info(st->log, &in);
    uint64_t seq = from > in.first_seq ? from : in.first_seq, n = 0;
    size_t bytes = 0;
    page_t pg = page_start();
    char *buf = NULL;
    size_t cap = 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "stream", st->cfg.name);
    cJSON *arr = cJSON_AddArrayToObject(o, "dead_letters");
    for (; seq <= in.committed_seq && n < limit && bytes < PAGE_BYTES && page_open(&pg); seq++) {
        slog_rec_t r;
        if (slog_read(st->log, seq, &r, &buf, &cap) <= 0 || !is_dead_letter(&r))
            continue;
        cJSON_AddItemToArray(arr, dead_letter_obj(&r));
        bytes += 400 + r.subject_len + r.hdr_len * 2 + r.payload_len * 2; /* about what it prints as */
        n++;
    }
    free(buf);
    json_add_uint(o, "next_seq", seq);
    cJSON_AddBoolToObject(o, "more", seq <= in.committed_seq);
    reply(sm, req, o);
}

/* ---- DLQ.REPLAY ----------------------------------------------------------------- */

typedef struct hbuf {
    char *b;
    size_t len, cap;
} hbuf_t;

static void keep_header(void *ctx, const char *n, size_t nl, const char *v, size_t vl)
{
    hbuf_t *h = ctx;
    if (dead_letter_is_header(n, nl) || (nl == 11 && !strncasecmp(n, "Nats-Msg-Id", 11)) ||
        (nl > 14 && !strncasecmp(n, "Nats-Expected-", 14)))
        return;
    streams_buf_printf(&h->b, &h->len, &h->cap, "%.*s: %.*s\r\n", (int)nl, n, (int)vl, v);
}

static uint64_t sum_counter(streams_t *sm, int which)
{
    uint64_t s = 0;
    for (int i = 0; i < sm->n; i++) {
        stream_t *st = sm->streams[i];
        s += which == 0 ? st->stored : which == 1 ? st->duplicates : st->conflicts + st->store_errors;
    }
    return s;
}

/* Publishes dead letter r (of stream st) to its original subject. */
static int replay_one(streams_t *sm, stream_t *st, const slog_rec_t *r)
{
    char *subject = header(r, "Tide-Original-Subject");
    if (!subject || !subject_valid_literal(subject, strlen(subject))) {
        free(subject);
        return -1;
    }
    hbuf_t h = {0};
    streams_buf_printf(&h.b, &h.len, &h.cap, "NATS/1.0\r\n");
    proto_header_each(r->hdr, r->hdr_len, keep_header, &h);
    streams_buf_printf(&h.b, &h.len, &h.cap, "Nats-Msg-Id: tide-replay.%s.%" PRIu64 "\r\n\r\n", st->cfg.name, r->seq);
    char *payload = util_mem_dup(r->payload, r->payload_len); /* r points into a buffer a publish may reuse */
    int rc = -1;
    if (h.b && payload) {
        proto_msg_t m;
        memset(&m, 0, sizeof m);
        m.subject = subject;
        m.subject_len = strlen(subject);
        m.hdr = h.b;
        m.hdr_len = h.len;
        m.payload = payload;
        m.payload_len = r->payload_len;
        server_publish(sm->srv, NULL, &m);
        rc = 0;
    }
    free(payload);
    free(h.b);
    free(subject);
    return rc;
}

/* What the publishes of a replay did to the streams: counters before it. */
typedef struct replay_count {
    uint64_t stored, duplicates, refused;
} replay_count_t;

static replay_count_t replay_count_now(streams_t *sm)
{
    replay_count_t c = {sum_counter(sm, 0), sum_counter(sm, 1), sum_counter(sm, 2)};
    return c;
}

/* The answer to a replay that published the dead letters seqs lists
 * (taken), the counters since c0 in it. */
static cJSON *replay_answer(streams_t *sm, stream_t *st, cJSON *seqs, replay_count_t c0)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "stream", st->cfg.name);
    json_add_uint(o, "replayed", (uint64_t)cJSON_GetArraySize(seqs));
    cJSON_AddItemToObject(o, "seqs", seqs);
    replay_count_t c = replay_count_now(sm);
    json_add_uint(o, "stored", c.stored - c0.stored);
    json_add_uint(o, "duplicates", c.duplicates - c0.duplicates);
    json_add_uint(o, "refused", c.refused - c0.refused);
    return o;
}

/* A replay of one: the answer, or an error for what is not a dead letter. */
static void replay_seq(streams_t *sm, stream_t *st, const proto_msg_t *req, uint64_t seq)
{
    char err[300];
    replay_count_t c0 = replay_count_now(sm);
    char *buf = NULL;
    size_t cap = 0;
    slog_rec_t r;
    int rc = slog_read(st->log, seq, &r, &buf, &cap);
    if (rc <= 0 || !is_dead_letter(&r)) {
        if (rc > 0)
            snprintf(err, sizeof err, "message %" PRIu64 " of stream '%s' is not a dead letter", seq, st->cfg.name);
        else
            snprintf(err, sizeof err, rc < 0 ? "stream '%s': cannot read sequence %" PRIu64
                                             : "stream '%s' has no message %" PRIu64,
                     st->cfg.name, seq);
        free(buf);
        reply_err(sm, req, err);
        return;
    }
    cJSON *seqs = cJSON_CreateArray();
    if (replay_one(sm, st, &r) == 0)
        json_append_uint(seqs, seq);
    free(buf);
    reply(sm, req, replay_answer(sm, st, seqs, c0));
}

/* A replay of all: one page of the dead letters in [from_seq, until_seq].
 * The first request fixes until_seq (the last record then), so that what
 * the replays add to this stream is not replayed again; the answer gives
 * it back with next_seq and more, for the next page. */
static void replay_page(streams_t *sm, stream_t *st, const proto_msg_t *req, uint64_t from, uint64_t until)
{
    slog_info_t in;
    slog_get_info(st->log, &in);
    if (!until || until > in.committed_seq)
        until = in.committed_seq;
    replay_count_t c0 = replay_count_now(sm);
    uint64_t replayed = 0, seq = from > in.first_seq ? from : in.first_seq;
    page_t pg = page_start();
    char *buf = NULL;
    size_t cap = 0;
    cJSON *seqs = cJSON_CreateArray();
    for (; seq <= until && replayed < PAGE_REPLAY && page_open(&pg); seq++) {
        slog_rec_t r;
        if (slog_read(st->log, seq, &r, &buf, &cap) <= 0 || !is_dead_letter(&r))
            continue;
        if (replay_one(sm, st, &r) == 0) {
            replayed++;
            json_append_uint(seqs, seq);
        }
        /* The publish may have read other records into its buffers; buf is ours. */
    }
    free(buf);
    cJSON *o = replay_answer(sm, st, seqs, c0);
    json_add_uint(o, "next_seq", seq);
    json_add_uint(o, "until_seq", until);
    cJSON_AddBoolToObject(o, "more", seq <= until);
    reply(sm, req, o);
}

static void dlq_replay(streams_t *sm, const proto_msg_t *req)
{
    cJSON *q;
    stream_t *st = request_stream(sm, req, &q);
    if (!st)
        return;
    uint64_t one = num(q, "seq", 0), from = num(q, "from_seq", 0), until = num(q, "until_seq", 0);
    int all = cJSON_IsTrue(q ? cJSON_GetObjectItemCaseSensitive(q, "all") : NULL);
    cJSON_Delete(q);
    if ((one >= 1) == all)
        reply_err(sm, req, "say which: {\"stream\": name, \"seq\": n} or {\"stream\": name, \"all\": true}");
    else if (all)
        replay_page(sm, st, req, from, until);
    else
        replay_seq(sm, st, req, one);
}

int dlq_admin(streams_t *sm, const char *verb, size_t vlen, const proto_msg_t *req)
{
#define IS(s) (vlen == strlen(s) && !memcmp(verb, s, vlen))
    if (IS("DLQ.LS"))
        dlq_ls(sm, req);
    else if (IS("DLQ.SHOW"))
        dlq_show(sm, req);
    else if (IS("DLQ.REPLAY"))
        dlq_replay(sm, req);
    else
        return 0;
    return 1;
#undef IS
}
