/* pull.c - the pull requests a pull consumer holds; see pull.h.  The
 * statuses and their headers are nats-server 2.10's (server/consumer.go:
 * processNextMsgRequest, nextWaiting, processWaiting). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "pull.h"
#include "util.h"

void pull_status(server_t *srv, const char *subject, size_t len, const char *status, const char *headers)
{
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "NATS/1.0 %s\r\n%s\r\n", status, headers);
    proto_msg_t m;
    memset(&m, 0, sizeof m);
    m.subject = subject;
    m.subject_len = len;
    m.hdr = hdr;
    m.hdr_len = (size_t)n < sizeof hdr ? (size_t)n : sizeof hdr - 1;
    m.payload = "";
    server_route_flags(srv, NULL, &m, ROUTE_NO_CAPTURE);
}

/* A status with the Nats-Pending-Messages and -Bytes of w. */
static void status_pending(server_t *srv, const pull_wait_t *w, const char *status)
{
    char h[128];
    snprintf(h, sizeof h, "Nats-Pending-Messages: %" PRId64 "\r\nNats-Pending-Bytes: %" PRId64 "\r\n", w->left,
             w->bytes);
    pull_status(srv, w->reply, w->rlen, status, h);
}

int pullq_add(pullq_t *q, int64_t max, const consumer_pull_req_t *req, const char *reply, size_t rlen, int64_t now)
{
    if (max > 0 && (int64_t)q->n >= max)
        return -1;
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 8;
        pull_wait_t *nw = realloc(q->w, nc * sizeof *nw);
        if (!nw)
            return -2;
        q->w = nw;
        q->cap = nc;
    }
    pull_wait_t *w = &q->w[q->n];
    memset(w, 0, sizeof *w);
    if (!(w->reply = util_mem_dup(reply, rlen)))
        return -2;
    w->rlen = rlen;
    w->left = req->batch > 0 ? req->batch : 1;
    w->bytes = req->max_bytes > 0 ? req->max_bytes : 0;
    w->expires = req->expires > 0 ? now + req->expires : 0;
    w->hb = req->heartbeat > 0 ? req->heartbeat : 0;
    w->hb_next = w->hb ? now + w->hb : 0;
    w->no_wait = req->no_wait;
    q->n++;
    return 0;
}

/* Drops request i (answered or not). */
static void drop(pullq_t *q, size_t i)
{
    free(q->w[i].reply);
    memmove(&q->w[i], &q->w[i + 1], (q->n - i - 1) * sizeof *q->w);
    q->n--;
}

pull_wait_t *pullq_target(pullq_t *q, server_t *srv, size_t size, int64_t now)
{
    while (q->n) {
        pull_wait_t *w = &q->w[0];
        if (w->expires && now >= w->expires) {
            status_pending(srv, w, "408 Request Timeout");
        } else if (w->bytes && (int64_t)size > w->bytes) {
            status_pending(srv, w, "409 Message Size Exceeds MaxBytes");
        } else if (w->got || server_has_interest(srv, w->reply, w->rlen)) {
            return w; /* (a request that took a message had a listener: pullq_tick looks again) */
        }
        drop(q, 0);
    }
    return NULL;
}

void pullq_delivered(pullq_t *q, server_t *srv, pull_wait_t *w, size_t size, int64_t now)
{
    w->got++;
    w->left--;
    if (w->bytes) {
        w->bytes -= (int64_t)size;
        if (w->bytes <= 0)
            w->left = 0;
    }
    if (w->hb)
        w->hb_next = now + w->hb;
    if (w->left > 0)
        return;
    if (w->bytes > 0)
        status_pending(srv, w, "409 Batch Completed");
    drop(q, (size_t)(w - q->w));
}

void pullq_tick(pullq_t *q, server_t *srv, int64_t now, int eos, uint64_t dseq, uint64_t sseq)
{
    for (size_t i = 0; i < q->n;) {
        pull_wait_t *w = &q->w[i];
        if (eos && w->no_wait && !w->got && !w->expires) {
            pull_status(srv, w->reply, w->rlen, "404 No Messages", "");
            drop(q, i);
            continue;
        }
        if ((w->expires && now >= w->expires) || (eos && w->no_wait && w->got > 0)) {
            status_pending(srv, w, "408 Request Timeout");
            drop(q, i);
            continue;
        }
        if (!server_has_interest(srv, w->reply, w->rlen)) {
            drop(q, i);
            continue;
        }
        if (w->hb && now >= w->hb_next) {
            char h[128];
            snprintf(h, sizeof h, "Nats-Last-Consumer: %" PRIu64 "\r\nNats-Last-Stream: %" PRIu64 "\r\n", dseq, sseq);
            pull_status(srv, w->reply, w->rlen, "100 Idle Heartbeat", h);
            w->hb_next = now + w->hb;
        }
        i++;
    }
}

void pullq_clear(pullq_t *q, server_t *srv, const char *status)
{
    for (size_t i = 0; i < q->n; i++) {
        if (srv && status)
            pull_status(srv, q->w[i].reply, q->w[i].rlen, status, "");
        free(q->w[i].reply);
    }
    free(q->w);
    memset(q, 0, sizeof *q);
}
