/*
 * dead_letter.h - the one builder of dead letters, and their publishing.
 *
 * A dead letter is an event tide gave up on, published with headers that
 * say why: by a consumer (max_deliver reached, +TERM) or by the script
 * pipeline (a rule failed).  Both build it here, from the event and a
 * dead_letter_facts_t, so every dead letter has the same shape:
 *
 *   NATS/1.0
 *   Tide-Original-Subject: <the event's subject>
 *   Tide-Reason: max_deliver | term | script
 *   Tide-Stage: upgrade | filter | route | handler | pipeline   (script)
 *   Tide-Script: file.lua:line of the failing rule              (script)
 *   Tide-Error: <the error, else the reason>
 *   Tide-Stream, Tide-Consumer, Tide-Sequence, Tide-Deliveries  (consumer)
 *   Tide-Dead-Letter-Id: <its identity>
 *   <the event's own headers>
 *
 * then the event's payload.  The event's own headers lose what would make
 * the dead letter refused or dropped where it is stored: Nats-Expected-*
 * (conditions of the first publish) and dead-letter headers of an earlier
 * dead letter.  A stream stores a dead letter under Tide-Dead-Letter-Id,
 * not the event's Nats-Msg-Id or CloudEvents id, so two dead letters of
 * one event (two consumers, two failing handlers) are both kept; a
 * consumer's id (stream.consumer.sequence) is the same if the same
 * sequence is given up twice, which stores it once.
 */
#ifndef TIDE_DEAD_LETTER_H
#define TIDE_DEAD_LETTER_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "server.h"

#define DEAD_LETTER_ID_HEADER "Tide-Dead-Letter-Id"

/* Why and where an event was given up.  Strings may be NULL (then their
 * header is left out); seq and deliveries 0 mean none. */
typedef struct dead_letter_facts {
    const char *to;       /* the dead_letter subject, or its prefix with per_subject */
    int per_subject;      /* 1: the letter goes to <to>.<the event's subject> */
    const char *reason;   /* "max_deliver", "term", "script" */
    const char *stage;    /* the pipeline stage that failed */
    const char *error;    /* the error text (NULL: the reason) */
    const char *script;   /* "file.lua:line" of the failing rule */
    const char *stream;   /* the stream and consumer it was delivered from */
    const char *consumer;
    uint64_t seq;         /* its sequence in that stream */
    uint32_t deliveries;  /* how often it was delivered */
} dead_letter_facts_t;

/* A built dead letter: msg points into buf (subject and header block) and
 * into the event (payload). */
typedef struct dead_letter {
    proto_msg_t msg;
    char *buf;
} dead_letter_t;

/*
 * Builds the dead letter of event m (its subject, headers and payload).
 * Returns 0, or -1 with the reason in why (out of memory).  The letter
 * borrows m's payload: use it while m lives; free it with dead_letter_free.
 */
int dead_letter_build(const proto_msg_t *m, const dead_letter_facts_t *f, dead_letter_t *out, char *why,
                      size_t whyn);
void dead_letter_free(dead_letter_t *dl);

/* What became of a dead letter that was sent. */
enum dead_letter_fate {
    DEAD_LETTER_STORED,    /* a stream captured and stored it (or had it already) */
    DEAD_LETTER_DELIVERED, /* not stored, but subscribers received it */
    DEAD_LETTER_LOST,      /* neither: it is gone (why says which way) */
};

/*
 * Builds the dead letter of m and routes it as the server's own message
 * (to the streams and subscribers, not through the pipeline).  Returns
 * its fate; for DEAD_LETTER_LOST why says why (no stream captures the
 * subject and nobody subscribes; the stream refused it; out of memory).
 * Counting and logging a loss is the caller's: it knows whose it is.
 */
int dead_letter_send(server_t *srv, const proto_msg_t *m, const dead_letter_facts_t *f, char *why, size_t whyn);

/* True when header name (n bytes) is one a dead letter gets (the list
 * above): DLQ.SHOW keeps them out of "headers", a replay drops them. */
int dead_letter_is_header(const char *name, size_t n);

#endif
