/* dead_letter.c - the one builder of dead letters (see dead_letter.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "dead_letter.h"
#include "stream_internal.h"
#include "util.h"

#define VALUE_MAX 1000 /* bytes of one Tide-* header value at most (an error text) */

/* The headers a dead letter gets, as dead_letter.h lists them. */
static const char *const dl_headers[] = {"Tide-Original-Subject", "Tide-Reason",   "Tide-Stage",
                                         "Tide-Script",           "Tide-Error",    "Tide-Stream",
                                         "Tide-Consumer",         "Tide-Sequence", "Tide-Deliveries",
                                         DEAD_LETTER_ID_HEADER,   NULL};

int dead_letter_is_header(const char *name, size_t n)
{
    for (int i = 0; dl_headers[i]; i++)
        if (strlen(dl_headers[i]) == n && !strncasecmp(dl_headers[i], name, n))
            return 1;
    return 0;
}

/* A growing buffer that remembers running out of memory. */
typedef struct buf {
    char *b;
    size_t len, cap;
    int failed;
} buf_t;

static void put(buf_t *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 512;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *nb = realloc(b->b, nc);
        if (!nb) {
            b->failed = 1;
            return;
        }
        b->b = nb;
        b->cap = nc;
    }
    memcpy(b->b + b->len, s, n);
    b->len += n;
    b->b[b->len] = '\0';
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

/* "name: value\r\n" with value on one line (CR and LF become spaces) and
 * at most VALUE_MAX bytes; nothing when value is NULL. */
static void put_header(buf_t *b, const char *name, const char *value)
{
    if (!value)
        return;
    char v[VALUE_MAX + 1];
    size_t n = 0;
    for (; value[n] && n < VALUE_MAX; n++)
        v[n] = value[n] == '\r' || value[n] == '\n' ? ' ' : value[n];
    puts_(b, name);
    puts_(b, ": ");
    put(b, v, n);
    puts_(b, "\r\n");
}

/* One header of the event: kept unless it is a condition of the event's
 * first publish (Nats-Expected-*) or a header of an earlier dead letter. */
static void own_header(void *ctx, const char *n, size_t nl, const char *v, size_t vl)
{
    buf_t *b = ctx;
    if (dead_letter_is_header(n, nl) || (nl > 14 && !strncasecmp(n, "Nats-Expected-", 14)))
        return;
    put(b, n, nl);
    puts_(b, ": ");
    put(b, v, vl);
    puts_(b, "\r\n");
}

/* The dead letter's identity: a consumer's sequence names it; a pipeline
 * failure gets a new one. */
static void letter_id(const dead_letter_facts_t *f, char *out, size_t n)
{
    if (f->stream && f->consumer && f->seq) {
        snprintf(out, n, "%s.%s.%" PRIu64, f->stream, f->consumer, f->seq);
        return;
    }
    char uuid[37];
    clock_event_id(uuid);
    snprintf(out, n, "%s", uuid);
}

int dead_letter_build(const proto_msg_t *m, const dead_letter_facts_t *f, dead_letter_t *out, char *why,
                      size_t whyn)
{
    buf_t b = {0};
    char num[24], id[300];
    memset(out, 0, sizeof *out);
    /* The subject first, then the block: offsets, since the buffer moves. */
    puts_(&b, f->to);
    if (f->per_subject) {
        puts_(&b, ".");
        put(&b, m->subject, m->subject_len);
    }
    size_t subject_len = b.len;
    put(&b, "", 1); /* its NUL */
    size_t hdr_at = b.len;
    puts_(&b, "NATS/1.0\r\n");
    char *subject = util_mem_dup(m->subject, m->subject_len);
    if (!subject)
        b.failed = 1;
    put_header(&b, "Tide-Original-Subject", subject);
    free(subject);
    put_header(&b, "Tide-Reason", f->reason);
    put_header(&b, "Tide-Stage", f->stage);
    put_header(&b, "Tide-Script", f->script);
    put_header(&b, "Tide-Error", f->error ? f->error : f->reason);
    put_header(&b, "Tide-Stream", f->stream);
    put_header(&b, "Tide-Consumer", f->consumer);
    if (f->seq) {
        snprintf(num, sizeof num, "%" PRIu64, f->seq);
        put_header(&b, "Tide-Sequence", num);
    }
    if (f->deliveries) {
        snprintf(num, sizeof num, "%u", f->deliveries);
        put_header(&b, "Tide-Deliveries", num);
    }
    letter_id(f, id, sizeof id);
    put_header(&b, DEAD_LETTER_ID_HEADER, id);
    if (m->hdr && m->hdr_len)
        proto_header_each(m->hdr, m->hdr_len, own_header, &b);
    puts_(&b, "\r\n");
    if (b.failed)
        goto fail;
    out->buf = b.b;
    out->msg.subject = b.b;
    out->msg.subject_len = subject_len;
    out->msg.hdr = b.b + hdr_at;
    out->msg.hdr_len = b.len - hdr_at;
    out->msg.payload = m->payload;
    out->msg.payload_len = m->payload_len;
    return 0;
fail:
    free(b.b);
    snprintf(why, whyn, "out of memory building the dead letter");
    return -1;
}

void dead_letter_free(dead_letter_t *dl)
{
    free(dl->buf);
    memset(dl, 0, sizeof *dl);
}

int dead_letter_send(server_t *srv, const proto_msg_t *m, const dead_letter_facts_t *f, char *why, size_t whyn)
{
    dead_letter_t dl;
    if (dead_letter_build(m, f, &dl, why, whyn) < 0)
        return DEAD_LETTER_LOST;
    int captured = 0;
    size_t n = server_route_report(srv, NULL, &dl.msg, 0, &captured);
    int fate = captured > 0 ? DEAD_LETTER_STORED : n ? DEAD_LETTER_DELIVERED : DEAD_LETTER_LOST;
    if (fate == DEAD_LETTER_LOST)
        snprintf(why, whyn, captured == CAPTURE_FAILED     ? "the stream capturing %.*s failed to store it"
                            : captured == CAPTURE_CONFLICT ? "the stream capturing %.*s refused it"
                                                           : "no stream captures %.*s and no one subscribes to it",
                 (int)(dl.msg.subject_len > 300 ? 300 : dl.msg.subject_len), dl.msg.subject);
    dead_letter_free(&dl);
    return fate;
}
