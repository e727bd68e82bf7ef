/*
 * pull.h - the pull requests a pull consumer holds (JetStream's
 * CONSUMER.MSG.NEXT): each asks for up to `batch` messages (and `max_bytes`
 * bytes) to its reply subject until it expires, and gets the status
 * messages JetStream clients expect (408 Request Timeout, 409 Message Size
 * Exceeds MaxBytes, 409 Batch Completed, 100 Idle Heartbeat, 409 Consumer
 * Deleted).  Part of consumer.c's delivery; times are monotonic ns.
 */
#ifndef TIDE_PULL_H
#define TIDE_PULL_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"
#include "stream.h"

typedef struct pull_wait {
    char *reply;
    size_t rlen;
    int64_t left;    /* messages still wanted */
    int64_t bytes;   /* bytes still allowed, 0: no limit */
    int64_t expires; /* 0: never */
    int64_t hb, hb_next;
    int no_wait;
    int64_t got; /* messages sent to it */
} pull_wait_t;

typedef struct pullq {
    pull_wait_t *w; /* oldest first */
    size_t n, cap;
} pullq_t;

/* Holds request req for reply (copied).  0, -1 when max requests are held
 * already, -2 out of memory. */
int pullq_add(pullq_t *q, int64_t max, const consumer_pull_req_t *req, const char *reply, size_t rlen, int64_t now);

/* The oldest request that can take a message of size bytes now, or NULL.
 * Requests on the way that cannot (expired: 408; size over their
 * max_bytes: 409; nobody subscribed to their reply: dropped) are answered
 * and dropped.  Whether someone listens is asked before a request's first
 * message only: pullq_tick asks again for those that got some. */
pull_wait_t *pullq_target(pullq_t *q, server_t *srv, size_t size, int64_t now);

/* The request pullq_target returned got a message of size bytes: counts
 * it, and drops the request when it is done (409 Batch Completed when it
 * had bytes left of a max_bytes). */
void pullq_delivered(pullq_t *q, server_t *srv, pull_wait_t *w, size_t size, int64_t now);

/* Answers what is due: 408 to expired requests (and, at the end of what
 * there is to deliver (eos), to no_wait requests that got something; 404
 * to those that got nothing and have no expiry), 100
 * Idle Heartbeat to those whose heartbeat is due (with the consumer's
 * last consumer and stream sequences); drops requests nobody listens to. */
void pullq_tick(pullq_t *q, server_t *srv, int64_t now, int eos, uint64_t dseq, uint64_t sseq);

/* Answers every request with the status line `status` ("409 Consumer
 * Deleted") and frees them all. */
void pullq_clear(pullq_t *q, server_t *srv, const char *status);

/* Sends a status message "NATS/1.0 <status>\r\n<headers>\r\n" (headers:
 * "" or lines ending in CRLF) to subject. */
void pull_status(server_t *srv, const char *subject, size_t len, const char *status, const char *headers);

#endif
