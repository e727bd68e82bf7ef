/*
 * cluster_ask.h - questions the node asks the cluster on a client's
 * behalf and answers itself once the cluster has (the JetStream API's
 * account-wide requests, merged with the node's local streams: jsapi_cluster.c).
 *
 * Each question gets inbox.<token> as its reply subject; the answer, or
 * its absence after CLUSTER_ASK_TIMEOUT seconds, is handed to the asker's
 * callback exactly once.  Loop thread only.
 */
#ifndef TIDE_CLUSTER_ASK_H
#define TIDE_CLUSTER_ASK_H

#include <stddef.h>

#include <nats/nats.h>

/* Seconds a question waits for its answer (a stock client gives up after 5). */
#define CLUSTER_ASK_TIMEOUT 3

typedef struct cluster_ask cluster_ask_t;

/* The answer to a question: answer is the cluster's message (the
 * callee's for the call only), or NULL when none came in time, the
 * question could not be sent, or the node leaves the cluster.  ctx is the
 * asker's, to free here. */
typedef void (*cluster_answer_fn)(void *ctx, natsMsg *answer);

/* Questions whose replies go to inbox.<token> (the caller subscribes to
 * inbox.* and hands each message to cluster_ask_answer).  NULL when out
 * of memory. */
cluster_ask_t *cluster_ask_new(const char *inbox);

/* Calls every waiting question's callback with NULL and frees a (NULL:
 * nothing). */
void cluster_ask_free(cluster_ask_t *a);

/* Publishes payload (len bytes) to subject on nc with a reply to a's
 * inbox; fn(ctx, answer) follows later, always (also when the publish
 * fails: then from cluster_ask_tick).  0, or -1 when out of memory (fn
 * is not called; ctx stays the caller's). */
int cluster_ask_send(cluster_ask_t *a, natsConnection *nc, const char *subject, const char *payload, size_t len,
                     cluster_answer_fn fn, void *ctx);

/* A message on the inbox (m stays the caller's). */
void cluster_ask_answer(cluster_ask_t *a, natsMsg *m);

/* Once a second: gives up the questions older than CLUSTER_ASK_TIMEOUT. */
void cluster_ask_tick(cluster_ask_t *a);

#endif
