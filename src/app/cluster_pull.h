/*
 * cluster_pull.h - consumers on jetstream-backed streams (consumer "x" {
 * stream = "orders" } with on(..., { consumer = "x" }, fn)): each is a
 * durable pull consumer in the cluster's JetStream, shared by every node
 * that declares it (docs/cluster.md).
 *
 * The node never waits for JetStream on its loop: a pull is a request on
 * $JS.API.CONSUMER.MSG.NEXT whose messages (and end-of-pull statuses)
 * arrive on an inbox the caller subscribes to; each message runs the
 * consumer's Lua handlers (a batch handler's once its batch is full or has
 * waited its `wait`) and is then acked, nak'd, or given up (dead letter,
 * then +TERM) by a publish to its $JS.ACK reply subject.
 * JetStream hands an unacked event to another node after ack_wait.  Loop
 * thread only.
 */
#ifndef TIDE_CLUSTER_PULL_H
#define TIDE_CLUSTER_PULL_H

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <nats/nats.h>

#include "cluster_js.h"
#include "script.h"

typedef struct cluster_pull cluster_pull_t;

/* For the consumers scripts declares on jetstream-backed streams (js
 * says which streams are bound yet).  Requests go out on nc with replies
 * under inbox: the caller subscribes to inbox.> and hands everything
 * arriving there to cluster_pull_message.  Batches are handed over on
 * base's timers.  NULL when out of memory. */
cluster_pull_t *cluster_pull_new(natsConnection *nc, struct event_base *base, script_host_t *scripts,
                                 cluster_js_t *js, const char *inbox);
/* Frees p; the batches it was filling are not answered (JetStream offers
 * them again after ack_wait).  Sends nothing on the connection. */
void cluster_pull_free(cluster_pull_t *p);

/* Requests go out on nc from now on (the node connected again with new
 * credentials; answers keep arriving on the same inbox). */
void cluster_pull_set_connection(cluster_pull_t *p, natsConnection *nc);

/* The rules were reloaded: takes their consumers, keeping the state of
 * those unchanged.  The events in the batch of a consumer dropped or
 * changed are -NAK'd at once, for another node. */
void cluster_pull_rules_changed(cluster_pull_t *p);

/* Makes missing consumers, and pulls for those with nothing on the way
 * (force != 0: after a reconnect, when earlier pulls may be lost).  Call
 * about once a second. */
void cluster_pull_sync(cluster_pull_t *p, int force);

/* Something on the inbox (m stays the caller's): a pulled event, a pull's
 * end, an answer of the JetStream API. */
void cluster_pull_message(cluster_pull_t *p, natsMsg *m);

/* The upstream went away: handlers pause until cluster_pull_sync(p, 1);
 * the batches filling are dropped unanswered (back after ack_wait). */
void cluster_pull_pause(cluster_pull_t *p);

struct cluster_kv;
/* The buckets the handlers write (kv may be NULL): an event's +ACK waits
 * until JetStream answered the bucket writes queued up to its handler's
 * end. */
void cluster_pull_set_kv(cluster_pull_t *p, struct cluster_kv *kv);

/* A bucket write ended: sends the acks that waited for it (and those
 * before). */
void cluster_pull_kv_settled(cluster_pull_t *p);

/* Adds "consumers": [{name, stream, state, error, handled, acked, naked,
 * redelivered, dead_lettered, given_up, dead_letter_failures, pending}],
 * "handler_lag" (their pending events, summed), "handlers_paused" and
 * "handler_pauses" (how often the upstream went away) to o. */
void cluster_pull_status(cluster_pull_t *p, cJSON *o);

/* The stream sequence and the pending count a JetStream delivery's reply
 * subject ($JS.ACK.<stream>.<consumer>...., with or without domain and
 * hash) carries.  0, or -1 when reply is not such a subject. */
int cluster_pull_ack_seq(const char *reply, uint64_t *seq, uint64_t *pending);

#endif
