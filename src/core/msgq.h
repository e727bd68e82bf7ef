/*
 * msgq.h - a FIFO of messages that own their bytes: events a handler
 * published (run after the current one) and events typed at the prompt
 * (run after the line).
 */
#ifndef TIDE_MSGQ_H
#define TIDE_MSGQ_H

#include <stddef.h>

#include "proto.h"

typedef struct msgq_item {
    struct msgq_item *next;
    int depth;     /* emit-chain depth */
    void *tag;     /* the owner's, set after msgq_push (NULL until then) */
    proto_msg_t m; /* points into the item's own copy */
} msgq_item_t;

typedef struct msgq {
    msgq_item_t *head, *tail;
    size_t bytes; /* headers and payloads queued */
} msgq_t;

/* Appends a copy of m (its tag NULL: q->tail->tag is the owner's to set).
 * Returns 0, or -1 when out of memory. */
int msgq_push(msgq_t *q, const proto_msg_t *m, int depth);

/* Takes the oldest item (caller frees it with msgq_item_free), or NULL. */
msgq_item_t *msgq_pop(msgq_t *q);

void msgq_item_free(msgq_item_t *it);

/* Frees every item. */
void msgq_clear(msgq_t *q);

#endif
