/*
 * cluster_kv.h - JetStream KV buckets of the cluster, kept on the node as
 * replicas (docs/cluster.md, "Buckets in cluster mode").
 *
 * For each bucket the node uses it keeps a replica fed by an ordered push
 * consumer on $KV.<name>.> (the newest message of each key, then every
 * new one), over the node's upstream connection: reads never leave the
 * node.  Writes are published to JetStream without waiting; an update is
 * queued per bucket, one in flight at a time, written with an expected
 * sequence and tried again once the replica has caught up when JetStream
 * says the sequence moved.  Everything arrives on an inbox the caller
 * subscribes to (cluster_kv_message); nothing here waits on the network.
 * Loop thread only.
 *
 * The scripts reach it through script_kv_remote_t (cluster_kv_remote);
 * other parts of the node can keep a replica of a bucket with
 * cluster_kv_open and read it with cluster_kv_get.
 */
#ifndef TIDE_CLUSTER_KV_H
#define TIDE_CLUSTER_KV_H

#include <stdint.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <nats/nats.h>

#include "script.h"

typedef struct cluster_kv cluster_kv_t;

/* How the watches subscribe upstream to their deliver subjects: the
 * messages must reach cluster_kv_message like the inbox's. */
typedef natsStatus (*cluster_kv_subscribe_fn)(void *ctx, natsSubscription **ns, const char *subject);

/* Requests go out on nc with replies under inbox: the caller subscribes
 * to inbox.> and hands everything arriving there, and on the
 * subscriptions made through subscribe, to cluster_kv_message.  base: the
 * node's loop (for the probe of the server's version).  NULL when out of
 * memory. */
cluster_kv_t *cluster_kv_new(natsConnection *nc, struct event_base *base, const char *inbox,
                             cluster_kv_subscribe_fn subscribe, void *ctx);

/* Destroys the watches' subscriptions (before the connection closes). */
void cluster_kv_unsubscribe(cluster_kv_t *k);

/* Frees k and the update jobs still queued (script_kv_job_free). */
void cluster_kv_free(cluster_kv_t *k);

/* The functions tide.kv and tide.kv.bucket call in cluster mode (ctx: k). */
void cluster_kv_remote(cluster_kv_t *k, script_kv_remote_t *ops);

/* Starts keeping a replica of bucket (made in the cluster's JetStream,
 * with min(3, servers known) replicas, when it is not there); idempotent.
 * 0, or -1 with err (not a bucket name, out of memory). */
int cluster_kv_open(cluster_kv_t *k, const char *bucket, char *err, size_t errsz);

/* The replica's newest value of subject ($KV.<bucket>.<key>): 1 with *e
 * (valid until the loop runs on), or 0 (none, deleted, or bucket not open). */
int cluster_kv_get(cluster_kv_t *k, const char *bucket, const char *subject, script_kv_entry_t *e);

/* 1 once bucket's replica holds what the bucket held when the watch
 * began (and what came since), else 0. */
int cluster_kv_synced(cluster_kv_t *k, const char *bucket);

/* Something on the inbox or on a watch's subscription (sid: the
 * subscription it came on; m stays the caller's; what is neither is
 * ignored). */
void cluster_kv_message(cluster_kv_t *k, int64_t sid, natsMsg *m);

/* The node's upstream connection is nc from now on (a reload changed its
 * credentials or tls); the watches move at the next cluster_kv_connected. */
void cluster_kv_set_connection(cluster_kv_t *k, natsConnection *nc);

/* The connection is up (again) at url: asks the server's version, and
 * starts the watches and the update in flight again. */
void cluster_kv_connected(cluster_kv_t *k, const char *url);

/* Once a second: questions and writes without an answer are sent again,
 * a watch that stopped hearing from JetStream is started again. */
void cluster_kv_tick(cluster_kv_t *k);

/* The node's writes to buckets (puts, updates, incrs) so far: a ticket
 * that cluster_kv_settled compares with (k NULL: 0). */
uint64_t cluster_kv_ticket(cluster_kv_t *k);

/* 1 when every write made up to ticket was answered by JetStream (stored,
 * refused) or given up, else 0 (k NULL: 1).  A scan of the writes in
 * flight: call it when cluster_kv_on_settled's fn says one ended. */
int cluster_kv_settled(cluster_kv_t *k, uint64_t ticket);

/* fn(arg) is called on the loop each time a write ends (NULL: none). */
void cluster_kv_on_settled(cluster_kv_t *k, void (*fn)(void *arg), void *arg);

/* Adds "buckets": [{name, state, error, keys, last_seq, synced, puts,
 * put_errors, updates, conflicts, update_failures, queued}] and
 * "kv_expect" (the header updates use) to o. */
void cluster_kv_status(cluster_kv_t *k, cJSON *o);

#endif
